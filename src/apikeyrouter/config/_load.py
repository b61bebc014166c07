"""Loading: TOML -> structured sections -> secrets and environment resolved -> semantic checks.

Each section (and each provider and key table) is structured on its own, so one broken table does not hide
the problems of the others: structural and semantic errors are collected into one `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from apikeyrouter.config._clients import check_budget, check_timezone_of, parse_clients, parse_teams
from apikeyrouter.config._convert import converter, describe_errors, did_you_mean, quote_choice
from apikeyrouter.config._policies import parse_policies, universe_of
from apikeyrouter.config._schema import (
    ENV_ADMIN_TOKEN,
    ENV_CLIENT_TOKENS,
    ENV_DEBUG_SOCKET,
    ENV_HOST,
    ENV_OBJECTIVE,
    ENV_PORT,
    OBJECTIVES,
    BreakerConfig,
    BudgetsConfig,
    CapacityConfig,
    DebugConfig,
    KeyConfig,
    LoggingConfig,
    ProviderConfig,
    RouterConfig,
    RoutingConfig,
    ServerConfig,
    StoreConfig,
    _DebugFile,
    _FailureOverride,
)
from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureAction, FailureClass, override_table
from apikeyrouter.errors import ConfigError
from apikeyrouter.secret import Secret, secret_problem

__all__ = [
    "bind_allowed",
    "default_config",
    "default_debug_socket",
    "load_config",
    "parse_config",
    "private_socket_dir",
]

_SECTIONS: Final = (
    "server", "routing", "breaker", "capacity", "providers", "keys",
    "budgets", "failures", "debug", "store", "logging", "clients", "teams",
    "policies",
)  # fmt: skip
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def valid_id(value: str) -> bool:
    """Provider and key ids: 1-64 of letters, digits, `.`, `_`, `:`, `-`, starting with a letter or digit
    (they appear in URLs, HTTP headers and logs)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


# Upper case only: a key pasted into `secret_env` by mistake then fails this check instead of being echoed
# back in "environment variable ... is not set".
_ENV_NAME_RE: Final = re.compile(r"[A-Z_][A-Z0-9_]*")
_UNIX_SOCKET_MAX: Final = 107  # sun_path is 108 bytes on Linux, NUL included
# Stands in for a secret that could not be resolved, so the rest of the key is still checked; a config
# holding it is never returned, because its error is already recorded.
_UNRESOLVED: Final = Secret("<unresolved>")

T = TypeVar("T")


class _Parser:
    def __init__(self, env: Mapping[str, str], source: str, base_dir: Path | None) -> None:
        self.env = env
        self.source = source
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.declared_providers: set[str] = set()

    def error(self, message: str, path: str) -> None:
        self.errors.append(f"{message} @ {path}")

    # -- structuring

    def table(self, data: Mapping[str, Any], name: str, cls: type[T]) -> T | None:
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            self.error("invalid value for type, expected a table", f"config.{name}")
            return None
        return self.structure(raw, cls, f"config.{name}")

    def structure(self, raw: Mapping[str, Any], cls: type[T], path: str) -> T | None:
        try:
            # Records shared with the domain (BreakerConfig, ModelPrice) validate themselves; here their
            # validators wait, so the checks below can name the exact field (`config.breaker.cooldown`).
            with attrs.validators.disabled():
                return converter.structure(dict(raw), cls)
        except Exception as exc:
            self.errors.extend(describe_errors(exc, path))
            return None

    def array(self, data: Mapping[str, Any], name: str) -> list[tuple[int, dict[str, Any]]]:
        raw = data.get(name, [])
        if not isinstance(raw, list | tuple):
            self.error("invalid value for type, expected an array of tables", f"config.{name}")
            return []
        tables = []
        for index, item in enumerate(raw):
            if isinstance(item, Mapping):
                tables.append((index, dict(item)))
            else:
                self.error("invalid value for type, expected a table", f"config.{name}[{index}]")
        return tables

    # -- secrets and environment

    def env_name(self, name: object, path: str) -> str | None:
        if not isinstance(name, str):
            return None  # the structuring step reports the type
        if not _ENV_NAME_RE.fullmatch(name):
            self.error(
                "must name an environment variable (UPPER_CASE letters, digits and _), not hold a secret itself",
                path,
            )
            return None
        return name

    def secret(self, value: str, path: str, what: str) -> Secret | None:
        """`value` as a Secret, or None with an error at `path` when it cannot be key material."""
        if (problem := secret_problem(value)) is not None:
            self.error(f"{what} {problem}", path)
            return None
        return Secret(value)

    def tokens(self, value: str, path: str, what: str) -> tuple[Secret, ...]:
        """Comma-separated tokens; each bad one is an error at `path` naming its position."""
        found = []
        for index, text in enumerate(t.strip() for t in value.split(",") if t.strip()):
            token = self.secret(text, path, f"{what}: token {index + 1}")
            if token is not None:
                found.append(token)
        return tuple(found)

    def env_value(self, name: str) -> str | None:
        """An override's value; unset and empty both mean "not overridden"."""
        value = self.env.get(name)
        return value if value else None

    def tokens_from_env(self, name: str, path: str) -> tuple[Secret, ...]:
        value = self.env.get(name)
        if value is None:
            self.error(f"environment variable {name} is not set", path)
            return ()
        if not value.strip(", \t\n"):
            self.error(f"environment variable {name} holds no tokens", path)
            return ()
        return self.tokens(value, path, f"environment variable {name}")

    def key_secret(self, raw: dict[str, Any], label: str, path: str) -> Secret | None:
        """The key's secret from `secret_env`, or None when `raw["secret"]` should be structured as is."""
        has_inline, has_env = "secret" in raw, "secret_env" in raw
        if has_inline and has_env:
            self.error(f"key {label} sets both secret and secret_env; keep one", path)
            return _UNRESOLVED
        if has_inline:
            self.warnings.append(f"key {label} has its secret inline in {self.source}; prefer secret_env")
            return None
        if not has_env:
            self.error(f"missing secret for key {label}: set secret_env (or secret)", path)
            return _UNRESOLVED
        name = self.env_name(raw["secret_env"], f"{path}.secret_env")
        if name is None:
            return _UNRESOLVED
        value = self.env.get(name)
        if value is None or not value.strip():
            state = "is not set" if value is None else "is empty"
            self.error(f"missing secret for key {label}: environment variable {name} {state}", f"{path}.secret_env")
            return _UNRESOLVED
        secret = self.secret(
            value.strip(), f"{path}.secret_env", f"the secret of key {label} in environment variable {name}"
        )
        return _UNRESOLVED if secret is None else secret

    def local_path(self, path: Path) -> Path:
        if self.base_dir is not None and not path.is_absolute():
            return self.base_dir / path
        return path

    # -- sections

    def parse(self, data: Mapping[str, Any]) -> RouterConfig:
        extra = sorted(str(k) for k in data if k not in _SECTIONS)
        if extra:
            hint = did_you_mean(extra, _SECTIONS)
            self.error(f"extra fields found ({', '.join(extra)})", "config" + (f"; {hint}" if hint else ""))

        server = self.server(data)
        self.check_server(server)
        routing = self.routing(data)
        breaker = self.table(data, "breaker", BreakerConfig) or BreakerConfig()
        self.check_breaker(breaker)
        capacity = self.table(data, "capacity", CapacityConfig) or CapacityConfig()
        self.check_capacity(capacity)
        providers = self.providers(data)
        keys = self.keys(data, providers)
        budgets = self.table(data, "budgets", BudgetsConfig) or BudgetsConfig()
        self.check_budgets(budgets)
        check_timezone_of(self, budgets)
        teams = parse_teams(self, data)
        clients = parse_clients(self, data, teams, server.client_tokens)
        policies = parse_policies(self, data, universe_of(list(providers.values()), keys, teams, clients))
        failures = self.failures(data)
        debug = self.debug(data, server.port)
        store = self.store(data)
        logging = self.table(data, "logging", LoggingConfig) or LoggingConfig()

        if self.errors:
            raise ConfigError(
                f"{self.source}: {len(self.errors)} configuration error(s):\n  " + "\n  ".join(self.errors),
                path=self.errors[0].rpartition(" @ ")[2],
                errors=tuple(self.errors),
            )
        return RouterConfig(
            server=server,
            routing=routing,
            breaker=breaker,
            capacity=capacity,
            providers=tuple(providers.values()),
            keys=tuple(keys),
            budgets=budgets,
            failures=failures,
            debug=debug,
            store=store,
            logging=logging,
            clients=tuple(clients),
            teams=tuple(teams),
            policies=tuple(policies),
            source=self.source,
            warnings=tuple(self.warnings),
        )

    def server(self, data: Mapping[str, Any]) -> ServerConfig:
        server = self.table(data, "server", ServerConfig) or ServerConfig()
        changes: dict[str, Any] = {}
        if server.client_tokens_env is not None:
            name = self.env_name(server.client_tokens_env, "config.server.client_tokens_env")
            if name is not None:
                changes["client_tokens"] = server.client_tokens + self.tokens_from_env(
                    name, "config.server.client_tokens_env"
                )
        if server.admin_token_env is not None:
            if server.admin_token is not None:
                self.error("set admin_token or admin_token_env, not both", "config.server")
            name = self.env_name(server.admin_token_env, "config.server.admin_token_env")
            value = self.env.get(name) if name else None
            if name is not None and (value is None or not value.strip()):
                state = "is not set" if value is None else "is empty"
                self.error(f"environment variable {name} {state}", "config.server.admin_token_env")
            elif value is not None and name is not None:
                token = self.secret(value.strip(), "config.server.admin_token_env", f"environment variable {name}")
                if token is not None:
                    changes["admin_token"] = token

        if (host := self.env_value(ENV_HOST)) is not None:
            changes["host"] = host
        if (port := self.env_value(ENV_PORT)) is not None:
            if re.fullmatch(r"[0-9]{1,5}", port) and int(port) <= 65535:
                changes["port"] = int(port)
            else:
                self.error(
                    f"invalid value {quote_choice(port)}, expected an integer port from 0 to 65535", f"${ENV_PORT}"
                )
        if (tokens := self.env_value(ENV_CLIENT_TOKENS)) is not None:
            if not tokens.strip(", \t\n"):
                self.error("holds no tokens", f"${ENV_CLIENT_TOKENS}")
            changes["client_tokens"] = self.tokens(tokens, f"${ENV_CLIENT_TOKENS}", "the client token list")
        if (admin := self.env_value(ENV_ADMIN_TOKEN)) is not None and admin.strip():
            token = self.secret(admin.strip(), f"${ENV_ADMIN_TOKEN}", "the admin token")
            if token is not None:
                changes["admin_token"] = token
        return attrs.evolve(server, **changes)

    def routing(self, data: Mapping[str, Any]) -> RoutingConfig:
        routing = self.table(data, "routing", RoutingConfig) or RoutingConfig()
        objective_path = "config.routing.objective"
        if (objective := self.env_value(ENV_OBJECTIVE)) is not None:
            routing, objective_path = attrs.evolve(routing, objective=objective.strip()), f"${ENV_OBJECTIVE}"
        self.check_routing(routing, objective_path)
        return routing

    def store(self, data: Mapping[str, Any]) -> StoreConfig:
        store = self.table(data, "store", StoreConfig) or StoreConfig()
        if not (store.flush_interval >= 0 and store.flush_interval <= 60):
            self.error("must be between 0 and 60 seconds", "config.store.flush_interval")
        self.at_least(store.retention, 1, "config.store.retention")
        if store.kind == "memory" and store.path is not None:
            self.error("only the sqlite store uses a path", "config.store.path")
        self.check_redis(store)
        if store.path is not None:
            store = attrs.evolve(store, path=self.local_path(store.path))
        return store

    def check_redis(self, store: StoreConfig) -> None:
        if store.kind != "redis":
            for name in ("url", "instance_id"):
                if getattr(store, name) is not None:
                    self.error("only the redis store uses " + name, f"config.store.{name}")
            return
        if store.path is not None:
            self.error("the redis store uses url, not path", "config.store.path")
        if store.url is None:
            self.error('the redis store needs a url, e.g. url = "redis://127.0.0.1:6379/0"', "config.store.url")
        elif not store.url.startswith(("redis://", "rediss://", "unix://")):
            self.error("must start with redis://, rediss:// or unix://", "config.store.url")
        else:
            try:
                urllib.parse.urlsplit(store.url).port  # noqa: B018 -- parsing it is the check
            except ValueError:
                self.error("the port is not a number from 0 to 65535", "config.store.url")
        if store.instance_id is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", store.instance_id):
            self.error("1-64 characters of letters, digits and . _ : -", "config.store.instance_id")
        if not 0 < store.redis_deadline <= 10:
            self.error("must be > 0 and <= 10 seconds", "config.store.redis_deadline")
        if not store.redis_deadline < store.instance_ttl <= 600:
            self.error("must be above redis_deadline and <= 600 seconds", "config.store.instance_ttl")

    def unique_id(self, raw: Mapping[str, Any], seen: set[str], kind: str, path: str) -> bool:
        """Check a table's `id` before structuring, so a duplicate shows even when the table has other errors."""
        raw_id = raw.get("id")
        if not isinstance(raw_id, str):
            return True  # missing or mistyped: structuring reports it
        if raw_id in seen:
            self.error(f"duplicate {kind} id {quote_choice(raw_id)}", f"{path}.id")
            return False
        seen.add(raw_id)
        return self.check_id(raw_id, f"{path}.id")

    def providers(self, data: Mapping[str, Any]) -> dict[str, ProviderConfig]:
        providers: dict[str, ProviderConfig] = {}
        for index, raw in self.array(data, "providers"):
            path = f"config.providers[{index}]"
            valid_id = self.unique_id(raw, self.declared_providers, "provider", path)
            provider = self.structure(raw, ProviderConfig, path)
            if provider is not None and valid_id:
                self.check_provider(provider, path)
                providers[provider.id] = provider
        return providers

    def keys(self, data: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> list[KeyConfig]:
        keys: list[KeyConfig] = []
        seen: set[str] = set()
        for index, raw in self.array(data, "keys"):
            path = f"config.keys[{index}]"
            label = raw["id"] if isinstance(raw.get("id"), str) else f"keys[{index}]"
            valid_id = self.unique_id(raw, seen, "key", path)
            # Every provider table with an id counts as declared, even one with errors: no cascade of
            # "unknown provider" from a single broken provider.
            provider_id = raw.get("provider")
            if isinstance(provider_id, str) and provider_id not in self.declared_providers:
                self.error(f"unknown provider {quote_choice(provider_id)}", f"{path}.provider")
            secret = self.key_secret(raw, label, path)
            if secret is not None:
                raw["secret"] = secret
            key = self.structure(raw, KeyConfig, path)
            if key is not None and valid_id:
                self.check_key(key, providers.get(key.provider), path)
                keys.append(key)
        return keys

    def failures(self, data: Mapping[str, Any]) -> dict[FailureClass, FailureAction]:
        raw = data.get("failures", {})
        if not isinstance(raw, Mapping):
            self.error("invalid value for type, expected a table", "config.failures")
            return dict(DEFAULT_ACTIONS)
        overrides: dict[FailureClass, FailureAction] = {}
        names = {f.value: f for f in FailureClass}
        for name, table in raw.items():
            path = f"config.failures.{name}"
            if name not in names:
                listing = ", ".join(names)
                self.error(f"unknown failure class {quote_choice(name)}, expected one of: {listing}", "config.failures")
                continue
            if not isinstance(table, Mapping):
                self.error("invalid value for type, expected a table", path)
                continue
            override = self.structure(table, _FailureOverride, path)
            if override is None:
                continue
            given = {field: value for field, value in attrs.asdict(override).items() if value is not None}
            overrides[names[name]] = attrs.evolve(DEFAULT_ACTIONS[names[name]], **given)
        return override_table(overrides)

    def debug(self, data: Mapping[str, Any], port: int) -> DebugConfig:
        debug = self.table(data, "debug", _DebugFile) or _DebugFile()
        if (override := self.env_value(ENV_DEBUG_SOCKET)) is not None:
            socket, path = Path(override), f"${ENV_DEBUG_SOCKET}"
        elif debug.socket is not None:
            socket, path = self.local_path(debug.socket), "config.debug.socket"
        else:
            socket, path = default_debug_socket(port, self.env), "config.debug.socket"
        if len(os.fsencode(socket)) > _UNIX_SOCKET_MAX:
            self.error(f"socket path is longer than {_UNIX_SOCKET_MAX} bytes, the Unix socket limit", path)
        return DebugConfig(socket=socket, enabled=debug.enabled)

    # -- semantic checks

    def check_id(self, value: str, path: str) -> bool:
        if _ID_RE.fullmatch(value):
            return True
        self.error(
            f"invalid id {quote_choice(value)}: use up to 64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
            path,
        )
        return False

    def at_least(self, value: float | Decimal | None, minimum: float, path: str, *, strict: bool = False) -> None:
        if value is None:
            return
        if value < minimum or (strict and value == minimum):
            self.error(f"must be {'>' if strict else '>='} {minimum:g} (got {value})", path)

    def check_server(self, server: ServerConfig) -> None:
        if not server.host.strip():
            self.error("must not be empty", "config.server.host")
        if not 0 <= server.port <= 65535:
            self.error(f"port must be from 0 to 65535 (got {server.port})", "config.server.port")
        self.at_least(server.grace_period, 0, "config.server.grace_period")
        self.at_least(server.request_deadline, 0, "config.server.request_deadline", strict=True)
        self.at_least(server.stream_idle_timeout, 0, "config.server.stream_idle_timeout", strict=True)
        self.at_least(server.max_body_bytes, 1, "config.server.max_body_bytes")
        self.at_least(server.decision_retention, 0, "config.server.decision_retention")
        self.at_least(server.max_header_bytes, 1024, "config.server.max_header_bytes")
        self.at_least(server.header_read_timeout, 0, "config.server.header_read_timeout", strict=True)
        self.at_least(server.keep_alive_timeout, 0, "config.server.keep_alive_timeout", strict=True)

    def check_routing(self, routing: RoutingConfig, objective_path: str) -> None:
        objective = routing.objective
        if isinstance(objective, str):
            if objective not in OBJECTIVES:
                self.error(
                    f"unknown objective {quote_choice(objective)}, expected one of: {', '.join(OBJECTIVES)} "
                    "or a table of weights",
                    objective_path,
                )
        else:
            weights = attrs.asdict(objective)
            for name, weight in weights.items():
                self.at_least(weight, 0, f"{objective_path}.{name}")
            if not any(w > 0 for w in weights.values()):
                self.error("at least one weight must be above 0", objective_path)
        self.at_least(routing.max_attempts, 1, "config.routing.max_attempts")
        self.at_least(routing.default_retry_after, 0, "config.routing.default_retry_after", strict=True)

    def check_breaker(self, breaker: BreakerConfig) -> None:
        self.at_least(breaker.failure_threshold, 1, "config.breaker.failure_threshold")
        self.at_least(breaker.cooldown, 0, "config.breaker.cooldown", strict=True)
        self.at_least(breaker.probe_deadline, 0, "config.breaker.probe_deadline", strict=True)
        self.at_least(breaker.backoff, 1, "config.breaker.backoff")
        self.at_least(breaker.max_cooldown, 0, "config.breaker.max_cooldown", strict=True)

    def check_capacity(self, capacity: CapacityConfig) -> None:
        if not 0 < capacity.critical < capacity.constrained < 1:
            self.error(
                f"need 0 < critical < constrained < 1 (got critical={capacity.critical:g}, "
                f"constrained={capacity.constrained:g})",
                "config.capacity",
            )

    def check_provider(self, provider: ProviderConfig, path: str) -> None:
        if not re.match(r"https?://[^/\s]+", provider.base_url):
            self.error("must be an http:// or https:// URL", f"{path}.base_url")
        self.at_least(provider.connect_timeout, 0, f"{path}.connect_timeout", strict=True)
        self.at_least(provider.read_timeout, 0, f"{path}.read_timeout", strict=True)
        self.at_least(provider.max_connections, 1, f"{path}.max_connections")
        if provider.anthropic_version is not None and provider.kind != "anthropic":
            self.error(
                f"only applies to kind anthropic (this provider is {provider.kind})", f"{path}.anthropic_version"
            )
        if provider.generic is not None:
            if provider.kind != "generic":
                self.error(f"only applies to kind generic (this provider is {provider.kind})", f"{path}.generic")
            elif "{key}" not in provider.generic.auth_format:
                self.error("must contain {key}, where the key goes", f"{path}.generic.auth_format")
        for model, price in provider.pricing.items():
            self.at_least(price.input, 0, f"{path}.pricing[{model!r}].input")
            self.at_least(price.output, 0, f"{path}.pricing[{model!r}].output")

    def check_key(self, key: KeyConfig, provider: ProviderConfig | None, path: str) -> None:
        for name in ("rpm", "tpm", "rpd", "tokens_per_month", "max_in_flight"):
            self.at_least(getattr(key, name), 1, f"{path}.{name}")
        self.at_least(key.budget, 0, f"{path}.budget")
        if provider is not None and provider.models:
            for model in key.models:
                if model not in provider.models:
                    self.error(f"model {model!r} is not among provider {provider.id!r}'s models", f"{path}.models")

    def check_budgets(self, budgets: BudgetsConfig) -> None:
        check_budget(self, budgets.global_, "config.budgets.global")
        for provider_id, budget in budgets.providers.items():
            path = f"config.budgets.providers[{provider_id!r}]"
            if provider_id not in self.declared_providers:
                self.error(f"unknown provider {quote_choice(provider_id)}", path)
            check_budget(self, budget, path)


def private_socket_dir() -> Path:
    """`/tmp/apikeyrouter-<uid>`: the per-user directory (mode 0700, created by the debug server) that holds
    default sockets when there is no usable `XDG_RUNTIME_DIR`. Literal `/tmp`: `serve` and `inspect` run from
    different shells and must agree."""
    return Path("/tmp") / f"apikeyrouter-{os.getuid()}"


def default_debug_socket(port: int | None, env: Mapping[str, str], *, private_dir: Path | None = None) -> Path:
    """The default debug socket; the one rule `serve` (through the config) and `inspect` and
    `debug.default_socket_path` (through this function) share.

    `<name>` is the port, or the process id when there is none (None or 0, a port picked at bind time):
    `$XDG_RUNTIME_DIR/apikeyrouter-<name>.sock` when that is a directory we may write to (per-user, 0700),
    else `<private_dir>/<name>.sock`, `private_dir` defaulting to `private_socket_dir()`. Never a socket
    directly in the world-writable `/tmp`. Creates nothing.
    """
    name = str(port) if port else str(os.getpid())
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir) and os.access(runtime_dir, os.W_OK | os.X_OK):
        return Path(runtime_dir) / f"apikeyrouter-{name}.sock"
    return (private_dir if private_dir is not None else private_socket_dir()) / f"{name}.sock"


def parse_config(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    *,
    base_dir: Path | None = None,
) -> RouterConfig:
    """Build a validated `RouterConfig` from a parsed TOML document (or any mapping of the same shape).

    `env` (default `os.environ`) resolves `secret_env`, `*_env` and the `APIKEYROUTER_*` overrides.
    Relative paths (debug socket, store) are taken relative to `base_dir` when given.
    Raises `ConfigError` with every problem found, one `message @ path` per entry of `errors`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a table", path="config")
    return _Parser(os.environ if env is None else env, source, base_dir).parse(data)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> RouterConfig:
    """Read a TOML file and `parse_config` it; relative paths inside resolve against the file's directory."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read config file {path}: {reason}", path=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text", path=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path=str(path)) from None
    return parse_config(data, env, str(path), base_dir=path.parent)


def default_config(env: Mapping[str, str] | None = None) -> RouterConfig:
    """Every default, no providers and no keys. The debug channel is off for embedded use."""
    config = parse_config({}, {} if env is None else env, "<default>")
    return attrs.evolve(config, debug=attrs.evolve(config.debug, enabled=False))


def bind_allowed(config: RouterConfig) -> str | None:
    """Why `serve` must refuse to listen with this config, or None when it may.

    Binding anything but a loopback address without a client token would open the upstream keys to
    whoever can reach the port.
    """
    host = config.server.host
    if config.server.client_tokens or any(c.token is not None for c in config.clients) or _is_loopback(host):
        return None
    return (
        f"refusing to listen on {host}:{config.server.port} without a client token: set server.client_tokens "
        f"or server.client_tokens_env (or ${ENV_CLIENT_TOKENS}), or listen on 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name might resolve anywhere
