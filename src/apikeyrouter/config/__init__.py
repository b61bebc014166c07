"""Configuration: TOML in, frozen attrs out, every mistake reported at once.

    load_config("router.toml")        read, parse, resolve secrets and environment overrides, validate
    parse_config(mapping, env, src)   the same from an already-parsed mapping (tests, embedded users)
    default_config()                  no providers, no keys: what the embedded `ApiKeyRouter()` starts with
    bind_allowed(config)              why `serve` must refuse to listen, or None
    diff_keys(old, new)               (added, removed, changed) for a SIGHUP reload; config_fingerprint(config)

Structuring goes through one private cattrs converter (`_convert`) with strict scalar hooks and
`forbid_extra_keys=True`, section by section, so a typo in `[server]` does not hide a duplicate key id further
down: structural and semantic errors are collected into one `ConfigError` whose `errors` tuple holds one
`message @ path` line per problem. Key material and tokens become `Secret` handles as soon as they are read,
so no repr of a config can show them. docs/config.md is the reference for every field.
"""

from apikeyrouter.config._clients import client_identities
from apikeyrouter.config._compare import ConfigDiff, config_fingerprint, config_to_dict, diff_keys, diff_providers
from apikeyrouter.config._load import (
    bind_allowed,
    default_config,
    default_debug_socket,
    load_config,
    parse_config,
    private_socket_dir,
    valid_id,
)
from apikeyrouter.config._policies import structure_policies, universe_of
from apikeyrouter.config._schema import (
    ENV_ADMIN_TOKEN,
    ENV_CLIENT_TOKENS,
    ENV_DEBUG_SOCKET,
    ENV_HOST,
    ENV_OBJECTIVE,
    ENV_PORT,
    OBJECTIVES,
    BreakerConfig,
    Budget,
    BudgetsConfig,
    CapacityConfig,
    ClientConfig,
    DebugConfig,
    GenericAdapterConfig,
    KeyConfig,
    LoggingConfig,
    ModelPrice,
    ObjectiveWeights,
    ProviderConfig,
    QuotaHeaders,
    RouterConfig,
    RoutingConfig,
    ServerConfig,
    StoreConfig,
    TeamConfig,
)

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
    "ConfigDiff",
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
    "bind_allowed",
    "client_identities",
    "config_fingerprint",
    "config_to_dict",
    "default_config",
    "default_debug_socket",
    "diff_keys",
    "diff_providers",
    "load_config",
    "parse_config",
    "private_socket_dir",
    "structure_policies",
    "universe_of",
    "valid_id",
]
