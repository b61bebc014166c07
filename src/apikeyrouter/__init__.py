"""apikeyrouter: route LLM traffic across many API keys, on an actor runtime built on trio."""

from apikeyrouter.config import RouterConfig, default_config, load_config, parse_config
from apikeyrouter.domain.refusal import Refusal, RefusalKind
from apikeyrouter.domain.request import ChatMessage, RequestIntent, ResponseMetadata, StreamChunk, SystemResponse, Usage
from apikeyrouter.errors import (
    ActorCrashed,
    ActorError,
    ActorStopped,
    ApiKeyRouterError,
    BudgetExceeded,
    ClientRateLimited,
    ConfigError,
    InvalidRequest,
    MailboxFull,
    MalformedResponse,
    NoKeyAvailable,
    RouterNotRunning,
    RoutingError,
    StreamInterrupted,
    SupervisorEscalation,
    UnknownKey,
    UnknownModel,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.runtime import ApiKeyRouter, open_router
from apikeyrouter.runtime.policies import PolicyRejected
from apikeyrouter.secret import Secret

__all__ = [
    "ActorCrashed",
    "ActorError",
    "ActorStopped",
    "ApiKeyRouter",
    "ApiKeyRouterError",
    "BudgetExceeded",
    "ChatMessage",
    "ClientRateLimited",
    "ConfigError",
    "InvalidRequest",
    "MailboxFull",
    "MalformedResponse",
    "NoKeyAvailable",
    "PolicyRejected",
    "Refusal",
    "RefusalKind",
    "RequestIntent",
    "ResponseMetadata",
    "RouterConfig",
    "RouterNotRunning",
    "RoutingError",
    "Secret",
    "StreamChunk",
    "StreamInterrupted",
    "SupervisorEscalation",
    "SystemResponse",
    "UnknownKey",
    "UnknownModel",
    "UnknownProvider",
    "UpstreamError",
    "Usage",
    "default_config",
    "load_config",
    "open_router",
    "parse_config",
]
