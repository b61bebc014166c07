"""Regressions found in review: malformed input that produced 500s or dropped connections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio

from apikeyrouter.proxy import ProxyApp, serve_proxy
from apikeyrouter.secret import Secret
from tests.proxy_fakes import ADMIN_TOKEN, CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy
from tests.routing_env import routing_env
from tests.test_debug_server import path, raw, served  # noqa: F401  (fixtures)
from tests.test_proxy_http import assert_openai_error

ADMIN = auth(ADMIN_TOKEN)


# -- proxy, scripted router ---------------------------------------------------------------------------


async def test_deeply_nested_json_body_is_a_400_not_a_500() -> None:
    # app.py _json_body catches ValueError/UnicodeDecodeError but not RecursionError.
    body = b"[" * 100_000 + b"]" * 100_000  # 200 kB, well under max_body_bytes
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        chat = await http.post("/v1/chat/completions", headers=auth(), content=body)
        add = await http.post("/keys", headers=ADMIN, content=body)
    assert_openai_error(chat, 400)
    assert_openai_error(add, 400)


async def test_lone_surrogate_in_the_model_name_still_gets_an_openai_error() -> None:
    # json.loads accepts "\ud800"; UnknownModel's message then cannot be UTF-8 encoded by _http.json_bytes,
    # so _fail itself raises and hypercorn answers a bare 500 with no body.
    body = json.dumps({**CHAT, "model": "gpt-\ud800"}).encode()  # ensure_ascii: sent as the escape \ud800
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post("/v1/chat/completions", headers=auth(), content=body)
    assert response.status_code in (400, 404), response.status_code
    assert_openai_error(response, response.status_code)


# -- proxy, real router in front of the simulator ----------------------------------------------------


@asynccontextmanager
async def real_proxy() -> AsyncIterator[str]:
    async with routing_env([("k1", "sk-sim-k1", {})]) as env:
        app = ProxyApp(env.router, client_tokens=[Secret(CLIENT_TOKEN)], admin_token=Secret(ADMIN_TOKEN))
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=done.wait))
            try:
                yield listening.url
            finally:
                done.set()


async def test_lone_surrogate_in_message_content_is_a_400_not_a_500() -> None:
    # The adapter's httpx.build_request(json=...) raises UnicodeEncodeError ("adapter_bug") -> 500.
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "hi \ud800"}]}).encode()
    async with real_proxy() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        plain = await http.post("/v1/chat/completions", headers=auth(), content=body)
        streamed = await http.post(
            "/v1/chat/completions", headers=auth(), content=body.replace(b'"model"', b'"stream": true, "model"')
        )
    assert_openai_error(plain, 400)
    assert_openai_error(streamed, 400)


async def test_registering_a_duplicate_key_id_is_a_4xx_not_a_500() -> None:
    # runtime._register raises a bare ValueError, which _errors.http_error_for maps to 500.
    key = {"id": "dup", "provider": "openai", "secret": "sk-sim-dup-000001"}
    async with real_proxy() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        first = await http.post("/keys", headers=ADMIN, json=key)
        second = await http.post("/keys", headers=ADMIN, json=key)
    assert first.status_code == 201
    assert 400 <= second.status_code < 500, second.text
    assert_openai_error(second, second.status_code)


async def test_post_keys_refuses_ids_the_rest_of_the_api_cannot_handle() -> None:
    # Config ids must match [A-Za-z0-9][A-Za-z0-9._:-]{0,63}; POST /keys takes any string. An id with a "/"
    # can never be reached by /keys/{id} (so it cannot be revoked or disabled over HTTP), and an id with
    # CR/LF makes every response served by that key fail (h11 refuses the x-apikeyrouter-key-id header) -> 500
    # after the upstream was already called and billed.
    async with real_proxy() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        for bad in ["a/b", "evil\r\nx-injected: 1", "sp ace", ""]:
            response = await http.post(
                "/keys", headers=ADMIN, json={"id": bad, "provider": "openai", "secret": "sk-sim-bad-id-0001"}
            )
            assert response.status_code == 400, (bad, response.status_code, response.text)


# -- debug channel ---------------------------------------------------------------------------------


async def test_debug_line_with_a_huge_integer_gets_an_error_object_and_keeps_the_connection(
    path: str,  # noqa: F811
    served: object,  # noqa: F811
) -> None:
    # requests.parse_request catches JSONDecodeError and RecursionError, but int() over 4300 digits raises a
    # plain ValueError: it escapes to _serve_client, which logs a traceback and drops the connection.
    client = await raw(path)
    answer = await client.ask(b'{"op": "decisions", "limit": 1' + b"0" * 5000 + b"}")
    assert answer["ok"] is False
    assert answer["error"]["code"] in ("bad_json", "bad_argument")
    assert (await client.ask(b'{"op": "ping"}'))["ok"] is True
