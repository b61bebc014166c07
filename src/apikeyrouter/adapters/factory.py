"""Build an adapter from a `[[providers]]` config entry."""

from __future__ import annotations

import httpx

from apikeyrouter.adapters.anthropic import AnthropicAdapter
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.adapters.generic import GenericHTTPAdapter
from apikeyrouter.adapters.openai import OpenAIAdapter
from apikeyrouter.config import ProviderConfig

__all__ = ["adapter_from_config"]


def adapter_from_config(cfg: ProviderConfig) -> ProviderAdapter:
    timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout, pool=cfg.connect_timeout)
    limits = httpx.Limits(
        max_connections=cfg.max_connections,
        max_keepalive_connections=cfg.max_connections,
        keepalive_expiry=30.0,
    )
    prices = dict(cfg.pricing)
    match cfg.kind:
        case "openai":
            return OpenAIAdapter(
                base_url=cfg.base_url,
                models=cfg.models,
                timeout=timeout,
                limits=limits,
                prices=prices,
                provider=cfg.id,
            )
        case "anthropic":
            base = cfg.base_url.rstrip("/")
            return AnthropicAdapter(
                # Anthropic documents https://api.anthropic.com; its Messages API lives under /v1.
                base_url=base if base.endswith("/v1") else base + "/v1",
                anthropic_version=cfg.anthropic_version or "2023-06-01",
                models=cfg.models,
                timeout=timeout,
                limits=limits,
                prices=prices,
                provider=cfg.id,
            )
        case "generic":
            g = cfg.generic
            if g is None:
                from apikeyrouter.config import GenericAdapterConfig

                g = GenericAdapterConfig()
            headers = {
                name: header
                for name, header in (
                    ("limit_requests", g.quota_headers.limit_requests),
                    ("remaining_requests", g.quota_headers.remaining_requests),
                    ("reset_requests", g.quota_headers.reset_requests),
                    ("limit_tokens", g.quota_headers.limit_tokens),
                    ("remaining_tokens", g.quota_headers.remaining_tokens),
                    ("reset_tokens", g.quota_headers.reset_tokens),
                    ("retry_after", g.quota_headers.retry_after),
                )
                if header
            }
            return GenericHTTPAdapter(
                url=cfg.base_url.rstrip("/") + g.path,
                method=g.method,
                auth_header=g.auth_header,
                auth_format=g.auth_format,
                content_path=g.content_path,
                input_tokens_path=g.input_tokens_path,
                output_tokens_path=g.output_tokens_path,
                quota_headers=headers,
                models=cfg.models,
                timeout=timeout,
                limits=limits,
                prices=prices,
                provider=cfg.id,
            )
