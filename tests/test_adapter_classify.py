"""The failure table: documented provider errors land in the right class; config can override."""

from __future__ import annotations

import pytest

from apikeyrouter.adapters import ClassifyRule, ErrorInfo, classify, rule_from_mapping, rules_with
from apikeyrouter.domain.failures import FailureClass as F
from apikeyrouter.errors import ConfigError

CASES = [
    # OpenAI
    (ErrorInfo(429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota"), F.QUOTA_EXHAUSTED),
    (ErrorInfo(429, "requests", "rate_limit_exceeded", "Rate limit reached for gpt-4o"), F.RATE_LIMITED),
    (ErrorInfo(429, "tokens", "rate_limit_exceeded", "Rate limit reached ... tokens per min"), F.RATE_LIMITED),
    (ErrorInfo(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided"), F.AUTH_INVALID),
    (ErrorInfo(403, "invalid_request_error", "unsupported_country_region_territory", "no"), F.PERMISSION),
    (
        ErrorInfo(400, "invalid_request_error", "context_length_exceeded", "maximum context length is 128000"),
        F.CONTEXT_LENGTH,
    ),
    (ErrorInfo(400, "invalid_request_error", "content_filter", "flagged"), F.CONTENT_POLICY),
    (ErrorInfo(400, "invalid_request_error", "content_policy_violation", "rejected"), F.CONTENT_POLICY),
    (ErrorInfo(400, "invalid_request_error", None, "Invalid value for temperature"), F.BAD_REQUEST),
    (ErrorInfo(404, "invalid_request_error", "model_not_found", "The model does not exist"), F.BAD_REQUEST),
    (ErrorInfo(422, None, None, "unprocessable"), F.BAD_REQUEST),
    (ErrorInfo(503, "server_error", None, "The engine is currently overloaded"), F.OVERLOADED),
    (ErrorInfo(500, "server_error", None, "The server had an error"), F.SERVER_ERROR),
    (ErrorInfo(502, None, None, "Bad gateway"), F.SERVER_ERROR),
    # Anthropic
    (ErrorInfo(529, "overloaded_error", None, "Overloaded"), F.OVERLOADED),
    (
        ErrorInfo(429, "rate_limit_error", None, "Number of request tokens has exceeded your per-minute rate limit"),
        F.RATE_LIMITED,
    ),
    (ErrorInfo(401, "authentication_error", None, "invalid x-api-key"), F.AUTH_INVALID),
    (ErrorInfo(403, "permission_error", None, "Your API key does not have permission"), F.PERMISSION),
    (
        ErrorInfo(400, "invalid_request_error", None, "prompt is too long: 215000 tokens > 200000 maximum"),
        F.CONTEXT_LENGTH,
    ),
    (
        ErrorInfo(400, "invalid_request_error", None, "Your credit balance is too low to access the Anthropic API."),
        F.QUOTA_EXHAUSTED,
    ),
    (ErrorInfo(402, "billing_error", None, "payment issue"), F.QUOTA_EXHAUSTED),
    (ErrorInfo(500, "api_error", None, "Internal server error"), F.SERVER_ERROR),
    (ErrorInfo(None, "overloaded_error", None, "Overloaded"), F.OVERLOADED),  # a mid-stream error event
    (ErrorInfo(None, "api_error", None, "boom"), F.SERVER_ERROR),
    (ErrorInfo(408, None, None, "timeout"), F.TIMEOUT),
    (ErrorInfo(302, None, None, "moved"), F.SERVER_ERROR),
]


@pytest.mark.parametrize(("info", "expected"), CASES)
def test_default_table(info: ErrorInfo, expected: F) -> None:
    assert classify(info) is expected


def test_extra_rules_come_first() -> None:
    quirk = ClassifyRule(F.OVERLOADED, statuses={500}, markers=("capacity",), provider="openai")
    rules = rules_with([quirk])
    assert classify(ErrorInfo(500, None, None, "at capacity", provider="openai"), rules) is F.OVERLOADED
    assert classify(ErrorInfo(500, None, None, "at capacity", provider="anthropic"), rules) is F.SERVER_ERROR
    assert classify(ErrorInfo(500, None, None, "other", provider="openai"), rules) is F.SERVER_ERROR


def test_rules_from_config() -> None:
    rule = rule_from_mapping({"failure": "rate_limited", "status": 400, "markers": ["Slow Down"]})
    assert classify(ErrorInfo(400, None, None, "please slow down"), rules_with([rule])) is F.RATE_LIMITED
    with pytest.raises(ConfigError, match=r"extra fields found \(stauts\) @ classify\[0\]"):
        rule_from_mapping({"failure": "rate_limited", "stauts": 400}, path="classify[0]")
    with pytest.raises(ConfigError, match="failure must be one of"):
        rule_from_mapping({"failure": "sad"})
    with pytest.raises(ConfigError, match="expected integers"):
        rule_from_mapping({"failure": "rate_limited", "status": "429"})
