"""Failure classification as data: (status, error type/code, body markers) -> `FailureClass`.

A `ClassifyRule` matches when every criterion it sets matches (unset criteria match anything); the first
matching rule in the table wins. `rules_with(extra)` puts configured rules before the defaults, so an
operator can reclassify one provider's quirk without forking the table. What each class *means*
(retry elsewhere? breaker? key effect?) is a separate table: `apikeyrouter.domain.failures.DEFAULT_ACTIONS`.

Defaults cover the documented bodies of both providers:

- OpenAI: `{"error": {"message", "type", "param", "code"}}`. 429 `insufficient_quota` (billing) is apart
  from 429 `rate_limit_exceeded`; 400 `context_length_exceeded`; `content_filter` /
  `content_policy_violation`; 401 `invalid_api_key`; 503 "engine overloaded".
- Anthropic: `{"type": "error", "error": {"type", "message"}}` with types `invalid_request_error` (400),
  `authentication_error` (401), `billing_error` (402), `permission_error` (403), `not_found_error` (404),
  `request_too_large` (413), `rate_limit_error` (429), `api_error` (500), `overloaded_error` (529).
  "prompt is too long" is a context-length 400; "credit balance is too low" is exhausted billing quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.errors import ConfigError

__all__ = [
    "DEFAULT_RULES",
    "ClassifyRule",
    "ErrorInfo",
    "classify",
    "rule_from_mapping",
    "rules_with",
]


def _lowered(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.lower() for v in values)


def _ints(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


def _markers(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(v.lower() for v in values)


@attrs.frozen
class ClassifyRule:
    """One row of the table. `markers` are lowercase substrings searched in the error message/body."""

    failure: FailureClass
    statuses: frozenset[int] = attrs.field(default=frozenset(), converter=_ints)
    error_types: frozenset[str] = attrs.field(default=frozenset(), converter=_lowered)
    codes: frozenset[str] = attrs.field(default=frozenset(), converter=_lowered)
    markers: tuple[str, ...] = attrs.field(default=(), converter=_markers)
    provider: str | None = None  # None: any provider
    name: str = ""

    def matches(self, info: ErrorInfo) -> bool:
        if self.provider is not None and info.provider != self.provider:
            return False
        if self.statuses and info.status not in self.statuses:
            return False
        if self.error_types and (info.error_type or "").lower() not in self.error_types:
            return False
        if self.codes and (info.code or "").lower() not in self.codes:
            return False
        if self.markers:
            text = info.text.lower()
            if not any(m in text for m in self.markers):
                return False
        return True


@attrs.frozen
class ErrorInfo:
    """What an adapter extracted from a failed response, the input to classification."""

    status: int | None
    error_type: str | None = None
    code: str | None = None
    message: str = ""
    provider: str | None = None

    @property
    def text(self) -> str:
        return " ".join(p for p in (self.error_type, self.code, self.message) if p)


_4XX = frozenset(range(400, 500))
_5XX = frozenset(range(500, 600))
_F = FailureClass

DEFAULT_RULES: tuple[ClassifyRule, ...] = (
    # Billing / hard quota first: both arrive as 429 (OpenAI) or 400/402 (Anthropic) and must not be
    # mistaken for a rate limit that clears in seconds.
    ClassifyRule(_F.QUOTA_EXHAUSTED, codes={"insufficient_quota"}, name="openai-insufficient-quota-code"),
    ClassifyRule(_F.QUOTA_EXHAUSTED, error_types={"insufficient_quota", "billing_error"}, name="quota-type"),
    ClassifyRule(_F.QUOTA_EXHAUSTED, statuses={402}, name="payment-required"),
    ClassifyRule(
        _F.QUOTA_EXHAUSTED,
        statuses={400, 403, 429},
        markers=("exceeded your current quota", "credit balance is too low"),
        name="quota-markers",
    ),
    ClassifyRule(_F.RATE_LIMITED, statuses={429}, name="429"),
    ClassifyRule(_F.RATE_LIMITED, error_types={"rate_limit_error"}, name="anthropic-rate-limit"),
    ClassifyRule(_F.AUTH_INVALID, statuses={401}, name="401"),
    ClassifyRule(_F.AUTH_INVALID, error_types={"authentication_error"}, name="anthropic-auth"),
    ClassifyRule(_F.AUTH_INVALID, codes={"invalid_api_key"}, name="openai-invalid-key"),
    ClassifyRule(_F.PERMISSION, statuses={403}, name="403"),
    ClassifyRule(_F.PERMISSION, error_types={"permission_error"}, name="anthropic-permission"),
    ClassifyRule(_F.CONTEXT_LENGTH, codes={"context_length_exceeded", "string_above_max_length"}, name="ctx-code"),
    ClassifyRule(
        _F.CONTEXT_LENGTH,
        statuses={400, 413},
        markers=("maximum context length", "context_length_exceeded", "prompt is too long", "context window"),
        name="ctx-markers",
    ),
    ClassifyRule(_F.CONTENT_POLICY, codes={"content_filter", "content_policy_violation"}, name="policy-code"),
    ClassifyRule(
        _F.CONTENT_POLICY,
        statuses={400},
        markers=("content_filter", "content policy", "content management policy", "usage policies"),
        name="policy-markers",
    ),
    ClassifyRule(_F.OVERLOADED, statuses={529, 503}, name="529-503"),
    ClassifyRule(_F.OVERLOADED, error_types={"overloaded_error"}, name="anthropic-overloaded"),
    ClassifyRule(_F.TIMEOUT, statuses={408}, name="408"),
    ClassifyRule(_F.SERVER_ERROR, statuses=_5XX, name="5xx"),
    ClassifyRule(_F.SERVER_ERROR, error_types={"api_error", "server_error"}, name="server-error-type"),
    ClassifyRule(_F.BAD_REQUEST, statuses=_4XX, name="4xx"),
)

# Anything no rule recognises (a 3xx, an error event without a type) is the provider misbehaving,
# not the caller: retry elsewhere and let the breaker see it.
_FALLBACK = FailureClass.SERVER_ERROR


def rules_with(extra: Sequence[ClassifyRule]) -> tuple[ClassifyRule, ...]:
    """The default table with `extra` rules consulted first."""
    return (*extra, *DEFAULT_RULES)


def classify(info: ErrorInfo, rules: Sequence[ClassifyRule] = DEFAULT_RULES) -> FailureClass:
    for rule in rules:
        if rule.matches(info):
            return rule.failure
    return _FALLBACK


_RULE_FIELDS = {
    "failure",
    "status",
    "statuses",
    "error_type",
    "error_types",
    "code",
    "codes",
    "markers",
    "provider",
    "name",
}


def rule_from_mapping(raw: Mapping[str, Any], *, path: str = "classify") -> ClassifyRule:
    """Build a rule from configuration, e.g. `{failure = "overloaded", status = 500, markers = ["capacity"]}`."""

    def strings(key_one: str, key_many: str) -> list[str]:
        values: list[str] = []
        if key_one in raw:
            values.append(raw[key_one])
        values.extend(raw.get(key_many, ()))
        for v in values:
            if not isinstance(v, str):
                raise ConfigError(f"{path}.{key_many}: expected strings, got {v!r}", path=f"{path}.{key_many}")
        return values

    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise ConfigError(f"extra fields found ({', '.join(unknown)}) @ {path}", path=path)
    try:
        failure = FailureClass(raw["failure"])
    except (KeyError, ValueError):
        choices = ", ".join(f.value for f in FailureClass)
        raise ConfigError(f"{path}.failure must be one of: {choices}", path=f"{path}.failure") from None
    statuses: list[int] = []
    if "status" in raw:
        statuses.append(raw["status"])
    statuses.extend(raw.get("statuses", ()))
    for s in statuses:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"{path}.statuses: expected integers, got {s!r}", path=f"{path}.statuses")
    markers = raw.get("markers", ())
    if not isinstance(markers, list | tuple) or not all(isinstance(m, str) for m in markers):
        raise ConfigError(f"{path}.markers: expected a list of strings", path=f"{path}.markers")
    provider = raw.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ConfigError(f"{path}.provider: expected a string", path=f"{path}.provider")
    return ClassifyRule(
        failure,
        statuses=frozenset(statuses),
        error_types=strings("error_type", "error_types"),
        codes=strings("code", "codes"),
        markers=tuple(markers),
        provider=provider,
        name=str(raw.get("name", "")),
    )
