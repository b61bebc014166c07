"""Build an adapter from a `[[providers]]` config entry: the one place `serve`, a reload and `check-config`
all build adapters, so a config the factory refuses is refused by `check-config` too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import assert_never

import attrs
import httpx

from apikeyrouter.adapters.anthropic import AnthropicAdapter
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.adapters.generic import GenericHTTPAdapter
from apikeyrouter.adapters.openai import OpenAIAdapter
from apikeyrouter.config import GenericAdapterConfig, ProviderConfig, QuotaHeaders, RouterConfig
from apikeyrouter.errors import ConfigError

__all__ = ["adapter_from_config", "build_adapters", "quota_header_map"]

# `[providers.generic.quota_headers]` field -> the QuotaSignal field its header fills.
_SIGNAL_FIELD = {
    "limit_requests": "limit_requests",
    "remaining_requests": "remaining_requests",
    "reset_requests": "reset_requests_s",
    "limit_tokens": "limit_tokens",
    "remaining_tokens": "remaining_tokens",
    "reset_tokens": "reset_tokens_s",
    "retry_after": "retry_after_s",
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def _header_problems(q: QuotaHeaders) -> Iterator[tuple[str, str | None, str]]:
    """(config field, header, problem or '') for every field that names a header, in declaration order."""
    seen: dict[str, str] = {}
    for field in attrs.fields(QuotaHeaders):
        header = getattr(q, field.name)
        if header is None:
            continue
        if not _HEADER_NAME.fullmatch(header):
            yield field.name, header, f"{header!r} is not an HTTP header name"
        elif header.lower() in seen:
            yield field.name, header, f"header {header!r} is already read for {seen[header.lower()]}"
        else:
            seen[header.lower()] = field.name
            yield field.name, header, ""


def quota_header_map(q: QuotaHeaders, path: str) -> dict[str, str]:
    """The config's `field = "header"` table as the adapter's `{header: QuotaSignal field}`; a header that
    cannot be read (not a header name, or already read for another field) is a ConfigError at its field."""
    mapping: dict[str, str] = {}
    for name, header, problem in _header_problems(q):
        if problem:
            raise ConfigError(f"{problem} @ {path}.{name}", path=f"{path}.{name}")
        assert header is not None
        mapping[header.lower()] = _SIGNAL_FIELD[name]
    return mapping


def build_adapters(config: RouterConfig) -> dict[str, ProviderAdapter]:
    """Every provider's adapter, built as the router builds it; one ConfigError listing each refusal."""
    adapters: dict[str, ProviderAdapter] = {}
    errors: list[str] = []
    for index, provider in enumerate(config.providers):
        path = f"config.providers[{index}]"
        try:
            adapters[provider.id] = adapter_from_config(provider, path=path)
        except ConfigError as exc:
            errors.extend(exc.errors)
        except (ValueError, TypeError) as exc:
            errors.append(f"provider {provider.id!r}: {exc} @ {path}")
    if errors:
        raise ConfigError(
            f"{config.source}: " + "; ".join(errors), path=errors[0].rpartition(" @ ")[2], errors=tuple(errors)
        )
    return adapters


def adapter_from_config(cfg: ProviderConfig, *, path: str | None = None) -> ProviderAdapter:
    """The adapter for one provider; `path` (its place in the config) names the field in a ConfigError."""
    path = path if path is not None else f"provider {cfg.id!r}"
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
            g = cfg.generic if cfg.generic is not None else GenericAdapterConfig()
            headers = quota_header_map(g.quota_headers, f"{path}.generic.quota_headers")
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
        case _:
            assert_never(cfg.kind)
