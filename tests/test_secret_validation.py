"""Key material that cannot go into an HTTP header is refused where it enters: the config, POST /keys,
rotate, and the library's register_key. The refusal names the field and never shows the secret."""

from __future__ import annotations

import tomllib

import httpx
import pytest

from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError, InvalidRequest
from apikeyrouter.secret import MAX_SECRET_LENGTH, Secret, secret_problem
from tests.proxy_fakes import ADMIN_TOKEN, FakeRouter, auth, running_proxy
from tests.routing_env import routing_env
from tests.test_proxy_http import assert_openai_error

CANARY = "sk-canary-7d1e0c9b"
# (what is wrong, the secret): each one made adapters/_http.py raise UnicodeEncodeError for every request.
BAD_SECRETS = [
    ("zero-width space", CANARY + "\u200b"),
    ("non-ASCII letter", CANARY + "é"),
    ("inner space", CANARY[:6] + " " + CANARY[6:]),
    ("tab", CANARY + "\tx"),
    ("NUL", CANARY + "\x00"),
    ("DEL", CANARY + "\x7f"),
    ("newline", CANARY + "\nx-injected: 1"),
    ("too long", "sk-" + "a" * MAX_SECRET_LENGTH),
]
IDS = [what for what, _ in BAD_SECRETS]


def test_printable_ascii_secrets_are_accepted() -> None:
    for good in (CANARY, "sk-ant-api03-AbC_dEf-123~!@#$%^&*()+=[]{}|;:'\",.<>/?`", "x"):
        assert secret_problem(good) is None
        assert Secret(good).reveal() == good


@pytest.mark.parametrize(("what", "value"), BAD_SECRETS, ids=IDS)
def test_a_secret_that_cannot_be_sent_is_refused_without_showing_it(what: str, value: str) -> None:
    problem = secret_problem(value)
    assert problem is not None and "canary" not in problem
    with pytest.raises(ValueError) as info:
        Secret(value)
    assert "canary" not in str(info.value) and "aaaaaaaa" not in str(info.value)


PROVIDER = '[[providers]]\nid = "openai"\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'


@pytest.mark.parametrize(("what", "value"), BAD_SECRETS, ids=IDS)
def test_config_refuses_a_bad_secret_from_the_environment_naming_the_field(what: str, value: str) -> None:
    text = PROVIDER + '[[keys]]\nid = "oa-1"\nprovider = "openai"\nsecret_env = "OA_KEY"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), {"OA_KEY": value}, "test.toml")
    (error,) = info.value.errors
    assert error.endswith("@ config.keys[0].secret_env"), error
    assert "OA_KEY" in error and "canary" not in error and "canary" not in str(info.value)


def test_config_refuses_bad_inline_secrets_and_tokens_naming_the_field() -> None:
    bad = CANARY + "\u200b"
    text = (
        f'[server]\nclient_tokens = ["good-token", "{bad}"]\nadmin_token = "{bad}"\n'
        + PROVIDER
        + f'[[keys]]\nid = "oa-1"\nprovider = "openai"\nsecret = "{bad}"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), {}, "test.toml")
    paths = sorted(e.rpartition(" @ ")[2] for e in info.value.errors)
    assert paths == ["config.keys[0].secret", "config.server.admin_token", "config.server.client_tokens[1]"], paths
    assert "canary" not in str(info.value)


def test_config_refuses_bad_tokens_from_the_environment() -> None:
    bad = CANARY + "é"
    text = '[server]\nclient_tokens_env = "CLIENTS"\nadmin_token_env = "ADMIN"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), {"CLIENTS": f"ok-token,{bad}", "ADMIN": bad}, "test.toml")
    paths = sorted(e.rpartition(" @ ")[2] for e in info.value.errors)
    assert paths == ["config.server.admin_token_env", "config.server.client_tokens_env"], info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config({}, {"APIKEYROUTER_CLIENT_TOKENS": bad, "APIKEYROUTER_ADMIN_TOKEN": bad}, "test.toml")
    paths = sorted(e.rpartition(" @ ")[2] for e in info.value.errors)
    assert paths == ["$APIKEYROUTER_ADMIN_TOKEN", "$APIKEYROUTER_CLIENT_TOKENS"], info.value.errors
    assert "canary" not in str(info.value)


@pytest.mark.parametrize(("what", "value"), BAD_SECRETS, ids=IDS)
async def test_post_keys_and_rotate_refuse_a_bad_secret_with_a_400_naming_it(what: str, value: str) -> None:
    router = FakeRouter()
    admin = auth(ADMIN_TOKEN)
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        created = await http.post("/keys", headers=admin, json={"provider": "openai", "secret": value})
        good = await http.post("/keys", headers=admin, json={"id": "k", "provider": "openai", "secret": CANARY})
        rotated = await http.post("/keys/k/rotate", headers=admin, json={"secret": value})
    for response in (created, rotated):
        error = assert_openai_error(response, 400)
        assert error["param"] == "secret" and "canary" not in response.text
    assert good.status_code == 201
    assert [k["id"] for k in router.keys()] == ["k"]


@pytest.mark.parametrize(("what", "value"), BAD_SECRETS, ids=IDS)
async def test_register_key_and_rotate_key_refuse_a_bad_secret_as_an_invalid_request(what: str, value: str) -> None:
    # Both raised a plain ValueError from Secret(): not the typed InvalidRequest (param "secret") that
    # the proxy answers with a 400 and a library caller can tell from a bug.
    async with routing_env([("k", CANARY, {})]) as env:
        with pytest.raises(InvalidRequest) as info:
            await env.router.register_key(value, "openai", key_id="bad")
        assert info.value.param == "secret" and "canary" not in str(info.value)
        assert env.router.key("bad") is None
        with pytest.raises(InvalidRequest) as info:
            await env.router.rotate_key("k", value)
        assert info.value.param == "secret" and "canary" not in str(info.value)
        key = env.router.key("k")
        assert key is not None and key["fingerprint"] == Secret(CANARY).fingerprint
