"""Client disconnects cancel the route; graceful shutdown drains in-flight streams; the proxy as an actor."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
import structlog.testing
import trio
import trio.testing

from apikeyrouter.domain.request import StreamChunk
from apikeyrouter.kernel.spec import ChildSpec
from apikeyrouter.proxy import Listening, ProxyApp, ProxyServer, serve_proxy
from apikeyrouter.secret import Secret
from apikeyrouter.supervisors import Supervisor
from tests.proxy_fakes import CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy


def raw_request(body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {CLIENT_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def test_client_disconnect_cancels_a_non_streaming_route() -> None:
    router = FakeRouter()
    router.route_delay = 30
    async with running_proxy(router) as proxy:
        with structlog.testing.capture_logs() as logs:
            conn = await trio.open_tcp_stream("127.0.0.1", proxy.listening.port)
            await conn.send_all(raw_request(CHAT))
            with trio.fail_after(5):
                await router.route_started.wait()
            await conn.aclose()
            with trio.fail_after(5):
                await router.route_cancelled.wait()
            await trio.testing.wait_all_tasks_blocked()
        in_flight = proxy.app.metrics.registry.get_sample_value("apikeyrouter_http_requests_in_flight")
    assert [e["status"] for e in logs if e["event"] == "http_request"] == [499]
    assert in_flight == 0


async def test_client_disconnect_mid_stream_cancels_the_stream() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"tok{i} ") for i in range(200)]
    router.stream_delay = 0.05
    async with running_proxy(router) as proxy:
        conn = await trio.open_tcp_stream("127.0.0.1", proxy.listening.port)
        await conn.send_all(raw_request({**CHAT, "stream": True}))
        received = b""
        with trio.fail_after(5):
            while b"tok0" not in received:
                received += await conn.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 200")
        await conn.aclose()
        with trio.fail_after(5):
            await router.stream_cancelled.wait()
    assert router.chunks_sent < 50


async def read_sse(response: httpx.Response) -> list[str]:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    return events


async def test_shutdown_lets_an_in_flight_stream_finish_and_refuses_new_connections() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"{i},") for i in range(10)]
    router.stream_delay = 0.05
    async with running_proxy(router, grace=5.0) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        async with http.stream("POST", "/v1/chat/completions", headers=auth(), json={**CHAT, "stream": True}) as r:
            lines = r.aiter_lines()
            first = await lines.__anext__()
            assert first.startswith("data: ")
            triggered = trio.current_time()
            proxy.shutdown.set()
            await trio.sleep(0.05)
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", proxy.listening.port)
            rest = [line[6:] async for line in lines if line.startswith("data: ")]
        finished = trio.current_time()
    events = [first[6:], *rest]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "".join(f"{i}," for i in range(10))
    assert finished - triggered < 2
    assert not router.stream_cancelled.is_set()


async def test_shutdown_cancels_what_outlives_the_grace_with_an_error_event() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta="x") for _ in range(1000)]
    router.stream_delay = 0.02
    async with (
        running_proxy(router, grace=0.3) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
        http.stream("POST", "/v1/chat/completions", headers=auth(), json={**CHAT, "stream": True}) as r,
    ):
        lines = r.aiter_lines()
        await lines.__anext__()
        triggered = trio.current_time()
        proxy.shutdown.set()
        events = [line[6:] async for line in lines if line.startswith("data: ")]
        cut = trio.current_time()
    assert 0.25 < cut - triggered < 2
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "server_shutdown"
    assert router.stream_cancelled.is_set()


async def test_serve_proxy_returns_after_the_trigger() -> None:
    app = ProxyApp(FakeRouter(), client_tokens=[Secret(CLIENT_TOKEN)])
    stop = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listening: Listening = await nursery.start(partial(serve_proxy, app, shutdown_trigger=stop.wait, grace=1))
            assert listening.host == "127.0.0.1" and listening.port > 0
            assert listening.url == f"http://127.0.0.1:{listening.port}"
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{listening.url}/health")).status_code == 200
            stop.set()


async def test_proxy_server_is_a_supervised_child_and_stops_gracefully() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"{i}") for i in range(6)]
    router.stream_delay = 0.05
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)])
    supervisor = Supervisor("root", children=[ChildSpec("proxy", lambda: ProxyServer(app, grace=3), shutdown=5)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            server = supervisor.child("proxy")
            assert isinstance(server, ProxyServer)
            listening = server.listening
            assert listening is not None and server.tree().state == listening
            async with (
                httpx.AsyncClient(base_url=listening.url) as http,
                http.stream("POST", "/v1/chat/completions", headers=auth(), json={**CHAT, "stream": True}) as r,
            ):
                lines = r.aiter_lines()
                await lines.__anext__()
                supervisor.stop()  # stops the proxy child: a graceful drain
                events = [line[6:] async for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 6  # 5 more chunks, then [DONE]
    assert supervisor.status == "stopped"
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", listening.port)
