"""Configuration: bad files give exact, path-named messages; good files load; secrets never show."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
import tomllib
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from apikeyrouter.cli import main
from apikeyrouter.config import (
    ConfigDiff,
    ObjectiveWeights,
    RouterConfig,
    bind_allowed,
    config_fingerprint,
    config_to_dict,
    default_config,
    diff_keys,
    diff_providers,
    load_config,
    parse_config,
)
from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureAction, FailureClass, KeyEffect
from apikeyrouter.errors import ConfigError
from apikeyrouter.secret import Secret

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "router.toml"

# A real per-user runtime directory: the default socket goes there only when it exists and is writable.
RUNTIME_DIR = tempfile.mkdtemp(prefix="xdg-runtime-")
atexit.register(shutil.rmtree, RUNTIME_DIR, ignore_errors=True)

# Values that must never appear in any output.
OA1, OA2, AN1, LOCAL = "sk-oa1-SECRETVALUE-aaaa", "sk-oa2-SECRETVALUE-bbbb", "sk-ant-SECRETVALUE-cccc", "local-SECRET"
CLIENTS, ADMIN = "client-tok-SECRET-1,client-tok-SECRET-2", "admin-tok-SECRET"
EXAMPLE_ENV = {
    "OPENAI_KEY_1": OA1,
    "OPENAI_KEY_2": OA2,
    "ANTHROPIC_KEY_1": AN1,
    "LOCAL_KEY": LOCAL,
    "APIKEYROUTER_CLIENTS": CLIENTS,
    "APIKEYROUTER_ADMIN": ADMIN,
    "XDG_RUNTIME_DIR": RUNTIME_DIR,
}
ALL_SECRETS = (OA1, OA2, AN1, LOCAL, ADMIN, *CLIENTS.split(","))

# A minimal valid config that the table below breaks one piece at a time.
PROVIDER = '[[providers]]\nid = "openai"\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
KEY = '[[keys]]\nid = "oa-1"\nprovider = "openai"\nsecret_env = "OPENAI_KEY_1"\n'
ENV = {"OPENAI_KEY_1": OA1}


def parse(text: str, env: dict[str, str] | None = None) -> RouterConfig:
    return parse_config(tomllib.loads(text), ENV if env is None else env, "test.toml")


def errors_of(text: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value.errors


BAD_CONFIGS = [
    # Typos, caught as extra fields at every depth.
    ("top-level typo", "[sever]\nport = 1\n", ("extra fields found (sever) @ config; did you mean 'server'?",)),
    ("server typo", "[server]\nprot = 8080\n", ("extra fields found (prot) @ config.server; did you mean 'port'?",)),
    (
        "key typo in the third key",
        PROVIDER + KEY + KEY.replace("oa-1", "oa-2") + KEY.replace("oa-1", "oa-3") + "rmp = 500\n",
        ("extra fields found (rmp) @ config.keys[2]; did you mean 'rpm'?",),
    ),
    (
        "pricing typo",
        PROVIDER + '[providers.pricing."gpt-4o"]\ninptu = "1"\ninput = "1"\noutput = "2"\n' + KEY,
        ("extra fields found (inptu) @ config.providers[0].pricing['gpt-4o']; did you mean 'input'?",),
    ),
    (
        "quota header typo, three tables deep",
        PROVIDER.replace('"openai"\nbase', '"generic"\nbase')
        + '[providers.generic.quota_headers]\nretry = "x"\n'
        + KEY,
        ("extra fields found (retry) @ config.providers[0].generic.quota_headers; did you mean 'retry_after'?",),
    ),
    (
        "failure override typo",
        "[failures.overloaded]\nretry = true\n",
        ("extra fields found (retry) @ config.failures.overloaded",),
    ),
    (
        "objective weights typo",
        "[routing]\nobjective = { speed = 1.0 }\n",
        ("extra fields found (speed) @ config.routing.objective",),
    ),
    # Wrong types: nothing is coerced.
    ("port as a string", '[server]\nport = "80"\n', ("invalid value for type, expected int @ config.server.port",)),
    ("port as a float", "[server]\nport = 80.0\n", ("invalid value for type, expected int @ config.server.port",)),
    ("rpm as a bool", PROVIDER + KEY + "rpm = true\n", ("invalid value for type, expected int @ config.keys[0].rpm",)),
    (
        "duration as a bool",
        "[server]\ngrace_period = true\n",
        ("invalid value for type, expected float @ config.server.grace_period",),
    ),
    (
        "duration as nan",
        "[breaker]\ncooldown = nan\n",
        ("invalid value for type, expected a finite float @ config.breaker.cooldown",),
    ),
    (
        # BreakerConfig and ModelPrice are the domain's own records: their checks still name the field.
        "breaker out of range",
        "[breaker]\nfailure_threshold = 0\nbackoff = 0.5\n",
        (
            "must be >= 1 (got 0) @ config.breaker.failure_threshold",
            "must be >= 1 (got 0.5) @ config.breaker.backoff",
        ),
    ),
    (
        "negative price",
        PROVIDER + '[providers.pricing."gpt-4o-mini"]\ninput = "-1"\noutput = "0.60"\n' + KEY,
        ("must be >= 0 (got -1) @ config.providers[0].pricing['gpt-4o-mini'].input",),
    ),
    ("host as a number", "[server]\nhost = 127\n", ("invalid value for type, expected str @ config.server.host",)),
    (
        "bool as a string",
        '[routing]\nwait_for_reset = "yes"\n',
        ("invalid value for type, expected bool @ config.routing.wait_for_reset",),
    ),
    (
        "money as a float",
        PROVIDER + KEY + "budget = 12.5\n",
        (
            'invalid value for type, expected decimal (a string like "0.15" or an integer; floats are inexact) '
            "@ config.keys[0].budget",
        ),
    ),
    (
        "price as a float",
        PROVIDER + '[providers.pricing."gpt-4o-mini"]\ninput = 0.15\noutput = "0.60"\n' + KEY,
        (
            'invalid value for type, expected decimal (a string like "0.15" or an integer; floats are inexact) '
            "@ config.providers[0].pricing['gpt-4o-mini'].input",
        ),
    ),
    (
        "money as garbage",
        '[budgets.global]\nlimit = "ten dollars"\n',
        (
            'invalid value for type, expected decimal (a string like "0.15" or an integer; floats are inexact) '
            "@ config.budgets.global.limit",
        ),
    ),
    (
        "models as a string",
        PROVIDER + KEY + 'models = "gpt-4o"\n',
        ("invalid value for type, expected list @ config.keys[0].models",),
    ),
    (
        "a model that is not a string",
        PROVIDER + KEY + 'models = ["gpt-4o", 4]\n',
        ("invalid value for type, expected str @ config.keys[0].models[1]",),
    ),
    (
        "metadata value not a string",
        PROVIDER + KEY + "metadata = { tier = 1 }\n",
        ("invalid value for type, expected str @ config.keys[0].metadata['tier']",),
    ),
    ("section not a table", "server = 3\n", ("invalid value for type, expected a table @ config.server",)),
    ("keys not an array", "keys = 3\n", ("invalid value for type, expected an array of tables @ config.keys",)),
    (
        "unknown provider kind",
        PROVIDER.replace('kind = "openai"', 'kind = "azure"') + KEY,
        ("invalid value 'azure', expected one of: openai, anthropic, generic @ config.providers[0].kind",),
    ),
    (
        "unknown key effect",
        '[failures.overloaded]\nkey_effect = "throttl"\n',
        (
            "invalid value 'throttl', expected one of: none, throttle, exhaust, invalidate "
            "@ config.failures.overloaded.key_effect",
        ),
    ),
    (
        "unknown failure class",
        "[failures.overload]\nretry_other_key = false\n",
        (
            "unknown failure class 'overload', expected one of: rate_limited, quota_exhausted, auth_invalid, "
            "permission, bad_request, context_length, content_policy, overloaded, server_error, timeout, connection, "
            "adapter_error "
            "@ config.failures",
        ),
    ),
    # Missing required fields.
    (
        "provider without kind",
        '[[providers]]\nid = "openai"\nbase_url = "https://x"\n',
        ("required field missing @ config.providers[0].kind",),
    ),
    (
        "key without provider",
        '[[keys]]\nid = "oa-1"\nsecret_env = "OPENAI_KEY_1"\n',
        ("required field missing @ config.keys[0].provider",),
    ),
    (
        "budget without limit",
        '[budgets.global]\nperiod = "day"\n',
        ("required field missing @ config.budgets.global.limit",),
    ),
    # References and identity.
    (
        "unknown provider",
        PROVIDER + KEY + KEY.replace("oa-1", "x-1").replace('"openai"', '"x"'),
        ("unknown provider 'x' @ config.keys[1].provider",),
    ),
    ("duplicate key id", PROVIDER + KEY + KEY, ("duplicate key id 'oa-1' @ config.keys[1].id",)),
    ("duplicate provider id", PROVIDER + PROVIDER + KEY, ("duplicate provider id 'openai' @ config.providers[1].id",)),
    (
        "id with a space",
        PROVIDER + KEY.replace('"oa-1"', '"oa 1"'),
        (
            "invalid id 'oa 1': use up to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit "
            "@ config.keys[0].id",
        ),
    ),
    (
        "key model the provider does not serve",
        PROVIDER + 'models = ["gpt-4o"]\n' + KEY + 'models = ["gpt-5"]\n',
        ("model 'gpt-5' is not among provider 'openai''s models @ config.keys[0].models",),
    ),
    (
        "budget for an unknown provider",
        PROVIDER + KEY + '[budgets.providers.azure]\nlimit = "5"\n',
        ("unknown provider 'azure' @ config.budgets.providers['azure']",),
    ),
    # Secrets.
    (
        "secret env unset",
        PROVIDER + KEY,
        ("missing secret for key oa-1: environment variable OPENAI_KEY_1 is not set @ config.keys[0].secret_env",),
        {},
    ),
    (
        "secret env empty",
        PROVIDER + KEY,
        ("missing secret for key oa-1: environment variable OPENAI_KEY_1 is empty @ config.keys[0].secret_env",),
        {"OPENAI_KEY_1": "  "},
    ),
    (
        "no secret at all",
        PROVIDER + '[[keys]]\nid = "oa-1"\nprovider = "openai"\n',
        ("missing secret for key oa-1: set secret_env (or secret) @ config.keys[0]",),
    ),
    (
        "both secret and secret_env",
        PROVIDER + KEY + f'secret = "{OA2}"\n',
        ("key oa-1 sets both secret and secret_env; keep one @ config.keys[0]",),
    ),
    (
        "a key pasted into secret_env",
        PROVIDER + KEY.replace('"OPENAI_KEY_1"', f'"{OA2}"'),
        (
            "must name an environment variable (UPPER_CASE letters, digits and _), not hold a secret itself "
            "@ config.keys[0].secret_env",
        ),
    ),
    (
        "client tokens env unset",
        '[server]\nclient_tokens_env = "CLIENTS"\n',
        ("environment variable CLIENTS is not set @ config.server.client_tokens_env",),
    ),
    (
        "both admin token and its env",
        f'[server]\nadmin_token = "{ADMIN}"\nadmin_token_env = "ADMIN"\n',
        ("set admin_token or admin_token_env, not both @ config.server",),
        {"ADMIN": ADMIN},
    ),
    # Ranges and choices.
    (
        "bad objective",
        '[routing]\nobjective = "speed"\n',
        (
            "unknown objective 'speed', expected one of: reliability, cost, fairness, latency, quality or a table of "
            "weights @ config.routing.objective",
        ),
    ),
    (
        "all-zero weights",
        "[routing]\nobjective = { cost = 0.0 }\n",
        ("at least one weight must be above 0 @ config.routing.objective",),
    ),
    ("max_attempts zero", "[routing]\nmax_attempts = 0\n", ("must be >= 1 (got 0) @ config.routing.max_attempts",)),
    (
        "port out of range",
        "[server]\nport = 70000\n",
        ("port must be from 0 to 65535 (got 70000) @ config.server.port",),
    ),
    (
        "negative deadline",
        "[server]\nrequest_deadline = -1\n",
        ("must be > 0 (got -1.0) @ config.server.request_deadline",),
    ),
    (
        "connection limits too small",
        "[server]\nmax_header_bytes = 100\nkeep_alive_timeout = 0\n",
        (
            "must be >= 1024 (got 100) @ config.server.max_header_bytes",
            "must be > 0 (got 0.0) @ config.server.keep_alive_timeout",
        ),
    ),
    ("rpm zero", PROVIDER + KEY + "rpm = 0\n", ("must be >= 1 (got 0) @ config.keys[0].rpm",)),
    (
        "capacity thresholds crossed",
        "[capacity]\nconstrained = 0.1\ncritical = 0.5\n",
        ("need 0 < critical < constrained < 1 (got critical=0.5, constrained=0.1) @ config.capacity",),
    ),
    (
        "base_url not http",
        PROVIDER.replace("https://", "ftp://") + KEY,
        ("must be an http:// or https:// URL @ config.providers[0].base_url",),
    ),
    (
        "anthropic_version on an openai provider",
        PROVIDER + 'anthropic_version = "2023-06-01"\n' + KEY,
        ("only applies to kind anthropic (this provider is openai) @ config.providers[0].anthropic_version",),
    ),
    (
        "generic auth format without the key",
        PROVIDER.replace('"openai"\nbase', '"generic"\nbase') + '[providers.generic]\nauth_format = "Bearer"\n' + KEY,
        ("must contain {key}, where the key goes @ config.providers[0].generic.auth_format",),
    ),
    (
        "store flush interval out of range",
        '[store]\nkind = "sqlite"\npath = "s.db"\nflush_interval = -1\n',
        ("must be between 0 and 60 seconds @ config.store.flush_interval",),
    ),
    (
        "store retention below one row",
        '[store]\nretention = 0\n',
        ("must be >= 1 (got 0) @ config.store.retention",),
    ),
    (
        "socket path too long",
        f'[debug]\nsocket = "/{"s" * 120}.sock"\n',
        ("socket path is longer than 107 bytes, the Unix socket limit @ config.debug.socket",),
    ),
    # Environment overrides are as strict as the file.
    (
        "bad APIKEYROUTER_PORT",
        "",
        ("invalid value 'eighty', expected an integer port from 0 to 65535 @ $APIKEYROUTER_PORT",),
        {"APIKEYROUTER_PORT": "eighty"},
    ),
    (
        "APIKEYROUTER_PORT out of range",
        "",
        ("invalid value '99999', expected an integer port from 0 to 65535 @ $APIKEYROUTER_PORT",),
        {"APIKEYROUTER_PORT": "99999"},
    ),
    (
        "bad APIKEYROUTER_OBJECTIVE",
        "",
        (
            "unknown objective 'fast', expected one of: reliability, cost, fairness, latency, quality or a table of "
            "weights @ $APIKEYROUTER_OBJECTIVE",
        ),
        {"APIKEYROUTER_OBJECTIVE": "fast"},
    ),
    (
        "APIKEYROUTER_CLIENT_TOKENS without a token",
        "",
        ("holds no tokens @ $APIKEYROUTER_CLIENT_TOKENS",),
        {"APIKEYROUTER_CLIENT_TOKENS": " , "},
    ),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_gives_exact_message(case: tuple[object, ...]) -> None:
    _, text, expected, *env = case
    assert errors_of(str(text), *env) == expected  # type: ignore[arg-type]


def test_every_error_is_reported_at_once() -> None:
    text = (
        '[server]\nport = "80"\n'
        '[routing]\nobjective = "speed"\n'
        + PROVIDER
        + KEY
        + "rmp = 5\n"
        + KEY
        + '[[keys]]\nid = "oa-2"\nprovider = "nope"\nsecret_env = "MISSING"\n'
    )
    assert errors_of(text) == (
        "invalid value for type, expected int @ config.server.port",
        "unknown objective 'speed', expected one of: reliability, cost, fairness, latency, quality or a table of "
        "weights @ config.routing.objective",
        "extra fields found (rmp) @ config.keys[0]; did you mean 'rpm'?",
        "duplicate key id 'oa-1' @ config.keys[1].id",
        "unknown provider 'nope' @ config.keys[2].provider",
        "missing secret for key oa-2: environment variable MISSING is not set @ config.keys[2].secret_env",
    )


def test_typos_suggest_the_nearest_field_and_nothing_when_no_field_is_close() -> None:
    text = PROVIDER + KEY + "rmp = 5\ntmp = 9\ncolour = 1\n" + '[budgets]\nglobl = { limit = "1", period = "month" }\n'
    assert errors_of(text) == (
        "extra fields found (colour, rmp, tmp) @ config.keys[0]; did you mean 'rpm' for rmp, 'tpm' for tmp?",
        "extra fields found (globl) @ config.budgets; did you mean 'global'?",
    )
    assert errors_of("[server]\nflavour = 1\n") == ("extra fields found (flavour) @ config.server",)


def test_config_error_message_lists_every_error_and_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse('[server]\nport = "80"\nprot = 1\n')
    assert str(info.value) == (
        "test.toml: 2 configuration error(s):\n"
        "  invalid value for type, expected int @ config.server.port\n"
        "  extra fields found (prot) @ config.server; did you mean 'port'?"
    )
    assert info.value.path == "config.server.port"


# ---------------------------------------------------------------------------------------------- good configs


def test_example_config_loads_with_every_section() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)

    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.client_tokens == tuple(Secret(t) for t in CLIENTS.split(","))
    assert config.server.admin_token == Secret(ADMIN)
    assert config.routing.objective == "reliability"
    assert [p.id for p in config.providers] == ["openai", "anthropic", "local"]
    assert [k.id for k in config.keys] == ["oa-1", "oa-2", "an-1", "local-1"]

    openai = config.provider("openai")
    assert openai is not None
    assert openai.pricing["gpt-4o-mini"].input == Decimal("0.15")
    assert openai.pricing["gpt-4o-mini"].output == Decimal("0.60")
    local = config.provider("local")
    assert local is not None and local.generic is not None
    assert local.generic.path == "/v1/chat/completions"
    assert local.generic.quota_headers.remaining_requests == "x-ratelimit-remaining-requests"
    assert local.generic.quota_headers.limit_tokens == "x-ratelimit-limit-tokens"  # default kept

    oa1 = config.key("oa-1")
    assert oa1 is not None
    assert oa1.secret.reveal() == OA1
    assert oa1.secret_env == "OPENAI_KEY_1"
    assert (oa1.rpm, oa1.tpm, oa1.rpd, oa1.budget) == (500, 200_000, 10_000, Decimal("250.00"))
    assert dict(oa1.metadata) == {"tier": "pay-as-you-go", "team": "search"}
    assert config.keys_for("openai") == (oa1, config.key("oa-2"))
    assert config.key("local-1") is not None and config.key("local-1").enabled is False  # type: ignore[union-attr]

    assert config.budgets.global_ is not None and config.budgets.global_.limit == Decimal("1000.00")
    assert config.budgets.providers["openai"].period == "day"
    assert config.failures[FailureClass.OVERLOADED] == FailureAction(
        retry_other_key=True, counts_for_breaker=False, key_effect=KeyEffect.THROTTLE
    )
    assert config.failures[FailureClass.RATE_LIMITED] == DEFAULT_ACTIONS[FailureClass.RATE_LIMITED]
    assert config.debug.socket == Path(RUNTIME_DIR) / "apikeyrouter-8080.sock"
    assert config.store.kind == "sqlite" and config.store.path == EXAMPLE.parent / "apikeyrouter.db"
    assert (config.store.flush_interval, config.store.retention) == (0.05, 100_000)
    assert config.warnings == ()
    assert bind_allowed(config) is None


def test_config_round_trips_through_its_dict_view() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    view = config_to_dict(config)
    json.dumps(view)  # JSON-ready
    # The view names secrets differently so it can never be read back as a config holding fingerprints.
    with pytest.raises(ConfigError, match="secret_fingerprint"):
        parse_config(view, EXAMPLE_ENV)
    view["server"].pop("client_token_fingerprints")
    view["server"].pop("admin_token_fingerprint")
    for key in view["keys"]:
        key.pop("secret_fingerprint")
    again = parse_config(view, EXAMPLE_ENV)
    assert again == config
    assert config_fingerprint(again) == config_fingerprint(config)


def test_docs_example_is_the_examples_file() -> None:
    docs = (ROOT / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert blocks[-1] == EXAMPLE.read_text()


def test_defaults() -> None:
    config = default_config()
    assert config.providers == () and config.keys == ()
    assert config.server == attrs.evolve(config.server, host="127.0.0.1", port=8080, grace_period=30.0)
    assert config.server.request_deadline == 60.0
    assert config.server.max_body_bytes == 1_048_576
    assert (config.routing.objective, config.routing.max_attempts, config.routing.wait_for_reset) == (
        "reliability",
        3,
        True,
    )
    assert config.failures == DEFAULT_ACTIONS
    assert config.debug.enabled is False  # embedded routers open no socket unless asked
    assert config.store.kind is None  # the library's default: memory (store_from_config)
    assert (config.logging.level, config.logging.format) == ("info", "json")
    assert parse_config({}, {}).debug.enabled is True  # a config file (serve) gets the debug channel


def test_weights_objective() -> None:
    config = parse("[routing]\nobjective = { cost = 0.7, reliability = 0.3 }\n")
    assert config.routing.objective == ObjectiveWeights(cost=0.7, reliability=0.3)


def test_integers_are_accepted_for_floats_and_money() -> None:
    config = parse(PROVIDER + KEY + "budget = 20\n[server]\ngrace_period = 5\n")
    assert config.server.grace_period == 5.0 and isinstance(config.server.grace_period, float)
    assert config.keys[0].budget == Decimal(20)


def test_inline_secret_works_with_a_warning() -> None:
    config = parse(PROVIDER + f'[[keys]]\nid = "oa-1"\nprovider = "openai"\nsecret = "{OA1}"\n', {})
    assert config.keys[0].secret.reveal() == OA1
    assert config.keys[0].secret_env is None
    assert config.warnings == ("key oa-1 has its secret inline in test.toml; prefer secret_env",)


def test_secret_from_env_is_stripped() -> None:
    config = parse(PROVIDER + KEY, {"OPENAI_KEY_1": f"  {OA1}\n"})
    assert config.keys[0].secret.reveal() == OA1


# ---------------------------------------------------------------------------------------------- environment


def test_environment_overrides() -> None:
    env = {
        **EXAMPLE_ENV,
        "APIKEYROUTER_HOST": "0.0.0.0",
        "APIKEYROUTER_PORT": "9090",
        "APIKEYROUTER_CLIENT_TOKENS": "tok-a, tok-b,",
        "APIKEYROUTER_ADMIN_TOKEN": "adm-2",
        "APIKEYROUTER_OBJECTIVE": "cost",
        "APIKEYROUTER_DEBUG_SOCKET": "/var/run/ar.sock",
    }
    config = load_config(EXAMPLE, env)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9090)
    assert config.server.client_tokens == (Secret("tok-a"), Secret("tok-b"))  # replaces the file's tokens
    assert config.server.admin_token == Secret("adm-2")
    assert config.routing.objective == "cost"
    assert config.debug.socket == Path("/var/run/ar.sock")


def test_empty_override_means_unset() -> None:
    config = parse("", {"APIKEYROUTER_PORT": "", "APIKEYROUTER_HOST": ""})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)


def test_default_debug_socket_follows_port_and_runtime_dir(tmp_path: Path) -> None:
    assert parse("[server]\nport = 9000\n", {"XDG_RUNTIME_DIR": str(tmp_path)}).debug.socket == (
        tmp_path / "apikeyrouter-9000.sock"
    )
    # no runtime directory (or one that does not exist): the private per-user directory, never /tmp itself
    for env in ({"APIKEYROUTER_PORT": "9001"}, {"APIKEYROUTER_PORT": "9001", "XDG_RUNTIME_DIR": "/run/user/7"}):
        assert parse("", env).debug.socket == Path(f"/tmp/apikeyrouter-{os.getuid()}/9001.sock")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text('[debug]\nsocket = "run/debug.sock"\n')
    config = load_config(path, {})
    assert config.debug.socket == tmp_path / "run" / "debug.sock"
    assert config.source == str(path)


# ---------------------------------------------------------------------------------------------- secrets


def test_secrets_never_show_in_repr_str_or_views() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    shown = [repr(config), str(config), json.dumps(config_to_dict(config)), config_fingerprint(config)]
    shown += [repr(k) for k in config.keys] + [repr(config.server)]
    for text in shown:
        for secret in ALL_SECRETS:
            assert secret not in text
    assert "fp:" in repr(config.keys[0])


def test_secrets_never_show_in_config_errors() -> None:
    inline = f'[server]\nadmin_token = "{ADMIN}"\nadmin_token_env = "ADMIN"\nport = "x"\n'
    pasted = PROVIDER + KEY.replace('"OPENAI_KEY_1"', f'"{OA2}"') + f'secret = "{OA1}"\nrpm = "{AN1}"\n'
    for text in (inline, pasted):
        with pytest.raises(ConfigError) as info:
            parse(text, {"ADMIN": ADMIN})
        shown = str(info.value) + repr(info.value) + "".join(info.value.errors)
        for secret in ALL_SECRETS:
            assert secret not in shown


def test_a_long_value_is_not_echoed_in_choice_errors() -> None:
    (message,) = errors_of(f'[logging]\nformat = "{OA1 * 3}"\n')
    assert message == "invalid value given, expected one of: json, console @ config.logging.format"


# ---------------------------------------------------------------------------------------------- serve checks


@pytest.mark.parametrize(
    ("host", "tokens", "allowed"),
    [
        ("127.0.0.1", "", True),
        ("localhost", "", True),
        ("::1", "", True),
        ("127.0.0.2", "", True),
        ("0.0.0.0", "", False),
        ("::", "", False),
        ("router.internal", "", False),
        ("0.0.0.0", "tok", True),
    ],
)
def test_bind_allowed(host: str, tokens: str, allowed: bool) -> None:
    env = {"APIKEYROUTER_HOST": host, "APIKEYROUTER_CLIENT_TOKENS": tokens}
    refusal = bind_allowed(parse_config({}, env))
    if allowed:
        assert refusal is None
    else:
        assert refusal == (
            f"refusing to listen on {host}:8080 without a client token: set server.client_tokens or "
            "server.client_tokens_env (or $APIKEYROUTER_CLIENT_TOKENS), or listen on 127.0.0.1"
        )


# ---------------------------------------------------------------------------------------------- reload


def test_diff_keys_for_reload() -> None:
    old = load_config(EXAMPLE, EXAMPLE_ENV)
    data = tomllib.loads(EXAMPLE.read_text())
    data["keys"] = [k for k in data["keys"] if k["id"] != "oa-2"]  # removed
    data["keys"][0]["rpm"] = 600  # oa-1 changed
    data["keys"].append({"id": "oa-3", "provider": "openai", "secret_env": "OPENAI_KEY_3"})  # added
    new = parse_config(data, {**EXAMPLE_ENV, "OPENAI_KEY_3": "sk-3", "ANTHROPIC_KEY_1": "sk-rotated"})

    added, removed, changed = diff_keys(old, new)
    assert [k.id for k in added] == ["oa-3"]
    assert [k.id for k in removed] == ["oa-2"]
    assert [k.id for k in changed] == ["oa-1", "an-1"]  # an-1: its secret rotated
    assert changed[0].rpm == 600
    assert diff_providers(old, new) == ConfigDiff((), (), ())
    assert config_fingerprint(old) != config_fingerprint(new)
    assert diff_keys(old, load_config(EXAMPLE, EXAMPLE_ENV)) == ConfigDiff((), (), ())


# ---------------------------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", {})
    assert info.value.errors == (f"cannot read config file {tmp_path / 'nope.toml'}: No such file or directory",)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[server\nadmin_token = "{ADMIN}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: invalid TOML: ")
    assert ADMIN not in str(info.value)


# ---------------------------------------------------------------------------------------------- check-config


def test_check_config_ok() -> None:
    result = CliRunner().invoke(main, ["check-config", str(EXAMPLE)], env=EXAMPLE_ENV)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "config OK: 3 providers, 4 keys\n"
        "http: 127.0.0.1:8080\n"
        f"debug channel: unix socket {RUNTIME_DIR}/apikeyrouter-8080.sock\n"
    )
    assert result.stderr == ""


def test_check_config_reports_each_error_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(PROVIDER + KEY + 'rmp = 5\n[server]\nport = "80"\n' + f'admin_token = "{ADMIN}"\n')
    result = CliRunner().invoke(main, ["check-config", str(path)], env={"OPENAI_KEY_1": OA1})
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: invalid value for type, expected int @ config.server.port\n"
        "error: extra fields found (rmp) @ config.keys[0]; did you mean 'rpm'?\n"
    )
    assert ADMIN not in result.output and OA1 not in result.output


def test_check_config_refuses_an_open_bind_without_tokens(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\n')
    result = CliRunner().invoke(main, ["check-config", str(path)], env={})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: refusing to listen on 0.0.0.0:8080 without a client token")


def test_check_config_warns_about_inline_secrets(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(PROVIDER + f'[[keys]]\nid = "oa-1"\nprovider = "openai"\nsecret = "{OA1}"\n')
    result = CliRunner().invoke(main, ["check-config", str(path)], env={})
    assert result.exit_code == 0
    assert result.stderr == f"warning: key oa-1 has its secret inline in {path}; prefer secret_env\n"
    assert OA1 not in result.output


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.output
