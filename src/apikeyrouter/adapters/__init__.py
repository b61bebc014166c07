"""Provider adapters: everything provider-specific lives here; the core never sees a wire format."""

from apikeyrouter.adapters._http import DEFAULT_LIMITS, DEFAULT_TIMEOUT, SSEDecoder, SSEEvent, scrub
from apikeyrouter.adapters.anthropic import AnthropicAdapter
from apikeyrouter.adapters.base import AdapterResult, AdapterStream, ProviderAdapter
from apikeyrouter.adapters.classify import (
    DEFAULT_RULES,
    ClassifyRule,
    ErrorInfo,
    classify,
    rule_from_mapping,
    rules_with,
)
from apikeyrouter.adapters.generic import GenericHTTPAdapter
from apikeyrouter.adapters.headers import (
    parse_anthropic_headers,
    parse_duration,
    parse_openai_headers,
    parse_retry_after,
)
from apikeyrouter.adapters.openai import OpenAIAdapter
from apikeyrouter.adapters.pricing import DEFAULT_PRICES, ModelPrice, PricedCost, PriceTable
from apikeyrouter.adapters.tokens import TokenCount, count_chat, count_request, count_text, encoding_for_model, warm
from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.signal import Capabilities, QuotaSignal

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_PRICES",
    "DEFAULT_RULES",
    "DEFAULT_TIMEOUT",
    "AdapterResult",
    "AdapterStream",
    "AnthropicAdapter",
    "Capabilities",
    "ClassifyRule",
    "CostEstimate",
    "ErrorInfo",
    "GenericHTTPAdapter",
    "ModelPrice",
    "OpenAIAdapter",
    "PriceTable",
    "PricedCost",
    "ProviderAdapter",
    "QuotaSignal",
    "SSEDecoder",
    "SSEEvent",
    "TokenCount",
    "classify",
    "count_chat",
    "count_request",
    "count_text",
    "encoding_for_model",
    "parse_anthropic_headers",
    "parse_duration",
    "parse_openai_headers",
    "parse_retry_after",
    "rule_from_mapping",
    "rules_with",
    "scrub",
    "warm",
]


def _conforms() -> None:
    """Never called: makes mypy check that every adapter satisfies the ProviderAdapter protocol."""
    adapters: list[ProviderAdapter] = [OpenAIAdapter(), AnthropicAdapter(), GenericHTTPAdapter(url="http://x")]
    del adapters
