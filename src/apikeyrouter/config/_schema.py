"""The configuration's shape: frozen attrs classes, one per TOML table, with their defaults.

docs/config.md documents every field; keep the two in step. Money is `Decimal`, durations are float seconds,
key material and tokens are `Secret` handles (their repr is a fingerprint).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import attrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from apikeyrouter.config._convert import Invalid, converter
from apikeyrouter.domain.circuit import BreakerConfig
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import FailureAction, FailureClass, KeyEffect
from apikeyrouter.domain.policy import Policy
from apikeyrouter.secret import Secret

__all__ = [
    "ENV_ADMIN_TOKEN",
    "ENV_CLIENT_TOKENS",
    "ENV_DEBUG_SOCKET",
    "ENV_HOST",
    "ENV_OBJECTIVE",
    "ENV_PORT",
    "OBJECTIVES",
    "BreakerConfig",
    "Budget",
    "BudgetsConfig",
    "CapacityConfig",
    "ClientConfig",
    "DebugConfig",
    "GenericAdapterConfig",
    "KeyConfig",
    "LoggingConfig",
    "ModelPrice",
    "ObjectiveWeights",
    "ProviderConfig",
    "QuotaHeaders",
    "RouterConfig",
    "RoutingConfig",
    "ServerConfig",
    "StoreConfig",
    "TeamConfig",
]

ENV_HOST: Final = "APIKEYROUTER_HOST"
ENV_PORT: Final = "APIKEYROUTER_PORT"
ENV_CLIENT_TOKENS: Final = "APIKEYROUTER_CLIENT_TOKENS"
ENV_ADMIN_TOKEN: Final = "APIKEYROUTER_ADMIN_TOKEN"
ENV_OBJECTIVE: Final = "APIKEYROUTER_OBJECTIVE"
ENV_DEBUG_SOCKET: Final = "APIKEYROUTER_DEBUG_SOCKET"

OBJECTIVES: Final = ("reliability", "cost", "fairness", "latency", "quality")


def _frozen_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    client_tokens: tuple[Secret, ...] = ()
    client_tokens_env: str | None = None
    admin_token: Secret | None = None
    admin_token_env: str | None = None
    grace_period: float = 30.0
    request_deadline: float = 60.0
    max_body_bytes: int = 1_048_576
    decision_retention: int = 1000
    stream_idle_timeout: float = 120.0
    metrics_require_admin: bool = False
    max_header_bytes: int = 16_384  # request line and headers; more is a 431
    header_read_timeout: float = 10.0  # from a request's first byte to the end of its head (slowloris)
    keep_alive_timeout: float = 75.0  # an idle keep-alive connection is closed after this
    preload_tokenizers: bool = True  # build the models' tokenizer tables before listening (~48 MiB RSS for o200k)


@attrs.frozen
class ObjectiveWeights:
    """A custom objective: each dimension's weight (non-negative, at least one above zero)."""

    reliability: float = 0.0
    cost: float = 0.0
    fairness: float = 0.0
    latency: float = 0.0
    quality: float = 0.0


@attrs.frozen
class RoutingConfig:
    objective: str | ObjectiveWeights = "reliability"
    max_attempts: int = 3
    wait_for_reset: bool = True
    default_retry_after: float = 30.0


@attrs.frozen
class CapacityConfig:
    """Fractions of quota left below which a key is constrained, then critical."""

    constrained: float = 0.5
    critical: float = 0.1


@attrs.frozen
class QuotaHeaders:
    """Response headers a generic provider reports its limits in (case-insensitive); unset = not read."""

    limit_requests: str | None = "x-ratelimit-limit-requests"
    remaining_requests: str | None = "x-ratelimit-remaining-requests"
    reset_requests: str | None = "x-ratelimit-reset-requests"
    limit_tokens: str | None = "x-ratelimit-limit-tokens"
    remaining_tokens: str | None = "x-ratelimit-remaining-tokens"
    reset_tokens: str | None = "x-ratelimit-reset-tokens"
    retry_after: str | None = "retry-after"


@attrs.frozen
class GenericAdapterConfig:
    """How to talk to an HTTP API that is neither OpenAI nor Anthropic. Paths are dotted (`choices.0.text`)."""

    method: Literal["POST", "PUT"] = "POST"
    path: str = "/chat/completions"
    auth_header: str = "Authorization"
    auth_format: str = "Bearer {key}"
    content_path: str = "choices.0.message.content"
    input_tokens_path: str = "usage.prompt_tokens"
    output_tokens_path: str = "usage.completion_tokens"
    quota_headers: QuotaHeaders = QuotaHeaders()


@attrs.frozen
class ProviderConfig:
    id: str
    kind: Literal["openai", "anthropic", "generic"]
    base_url: str
    models: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_connections: int = 100
    anthropic_version: str | None = None
    generic: GenericAdapterConfig | None = None
    pricing: Mapping[str, ModelPrice] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class KeyConfig:
    """One API key. `secret` is resolved (from `secret_env` or inline); its repr shows a fingerprint only."""

    id: str
    provider: str
    secret: Secret
    secret_env: str | None = None
    enabled: bool = True
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tokens_per_month: int | None = None
    max_in_flight: int | None = None
    budget: Decimal | None = None
    models: tuple[str, ...] = ()
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class Budget:
    """A spending limit per calendar period (in `budgets.timezone`); `soft` serves past it and says so."""

    limit: Decimal
    period: Literal["hour", "day", "week", "month"] = "month"
    mode: Literal["hard", "soft"] = "hard"


@attrs.frozen
class BudgetsConfig:
    """Spending limits. `global_` is spelled `global` in TOML. `client_default`: the budget each client
    without one of its own gets (clients never configured included)."""

    global_: Budget | None = None
    providers: Mapping[str, Budget] = attrs.field(factory=dict, converter=_frozen_mapping)
    timezone: str = "UTC"
    client_default: Budget | None = None


@attrs.frozen
class TeamConfig:
    """A team: clients that share its budget and rate limits."""

    id: str
    budget: Budget | None = None
    rpm: int | None = None
    tpm: int | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class ClientConfig:
    """A caller: its token (resolved from `token_env` or inline), team, limits and defaults. The id is
    what logs, metrics, decisions and /state show; the token never is."""

    id: str
    token: Secret | None = None
    token_env: str | None = None
    team: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None
    models: tuple[str, ...] = ()  # empty: every model
    objective: str | None = None  # its requests' objective when they name none


@attrs.frozen
class DebugConfig:
    socket: Path
    enabled: bool = True


@attrs.frozen
class StoreConfig:
    kind: Literal["memory", "sqlite", "redis"] | None = None  # None: memory for the library, sqlite for `serve`
    path: Path | None = None  # sqlite: the database file (serve's default: apikeyrouter.db)
    flush_interval: float = 0.05  # seconds of changes gathered into one write
    retention: int = 100_000  # decision and budget-history rows kept (transitions are all kept)
    # redis: several instances share key windows, in-flight slots, budgets and benches (store/redis_shared.py).
    url: str | None = None
    instance_id: str | None = None  # unset: hostname-pid; must be unique among live instances
    redis_deadline: float = 0.25  # seconds per Redis call before this instance falls back / fails closed
    instance_ttl: float = 5.0  # a silent instance's slots and holds are reclaimed after this


@attrs.frozen
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@attrs.frozen
class RouterConfig:
    server: ServerConfig
    routing: RoutingConfig
    breaker: BreakerConfig
    capacity: CapacityConfig
    providers: tuple[ProviderConfig, ...]
    keys: tuple[KeyConfig, ...]
    budgets: BudgetsConfig
    failures: Mapping[FailureClass, FailureAction] = attrs.field(converter=_frozen_mapping)
    debug: DebugConfig
    store: StoreConfig
    logging: LoggingConfig
    clients: tuple[ClientConfig, ...] = ()
    teams: tuple[TeamConfig, ...] = ()
    policies: tuple[Policy, ...] = ()
    source: str = attrs.field(default="<config>", eq=False)
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False)

    def provider(self, provider_id: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.id == provider_id), None)

    def key(self, key_id: str) -> KeyConfig | None:
        return next((k for k in self.keys if k.id == key_id), None)

    def keys_for(self, provider_id: str) -> tuple[KeyConfig, ...]:
        return tuple(k for k in self.keys if k.provider == provider_id)

    def client(self, client_id: str) -> ClientConfig | None:
        return next((c for c in self.clients if c.id == client_id), None)


# The file's shape where it differs from the resolved classes above.


@attrs.frozen
class _DebugFile:
    socket: Path | None = None
    enabled: bool = True


@attrs.frozen
class _FailureOverride:
    retry_other_key: bool | None = None
    counts_for_breaker: bool | None = None
    key_effect: KeyEffect | None = None
    caller_fault: bool | None = None


def _structure_objective(value: object, _: Any) -> str | ObjectiveWeights:
    if isinstance(value, str):
        return value  # the name is checked with the other semantic rules, so env overrides share it
    if isinstance(value, Mapping):
        return converter.structure(dict(value), ObjectiveWeights)
    raise Invalid("invalid value for type, expected an objective name or a table of weights")


converter.register_structure_hook(str | ObjectiveWeights, _structure_objective)
converter.register_structure_hook(
    BudgetsConfig,
    make_dict_structure_fn(BudgetsConfig, converter, _cattrs_forbid_extra_keys=True, global_=override(rename="global")),
)
converter.register_unstructure_hook(
    BudgetsConfig, make_dict_unstructure_fn(BudgetsConfig, converter, global_=override(rename="global"))
)
