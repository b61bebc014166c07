"""The proxy against clients that do legal but unusual things: `Connection: close` on a stream, deadlines
that are technically positive numbers."""

from __future__ import annotations

import json

import httpx
import pytest
import structlog.testing
import trio
import trio.testing

from tests.proxy_fakes import CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy
from tests.test_proxy_http import assert_openai_error


def raw_request(body: dict[str, object], *, close: bool) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {CLIENT_TOKEN}\r\nContent-Type: application/json\r\n"
        + ("Connection: close\r\n" if close else "")
        + f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_until_closed(conn: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await conn.receive_some(65536):
        received += chunk
    return received


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_connection_close_completes_closes_and_counts_200(stream: bool) -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                conn = await trio.open_tcp_stream("127.0.0.1", proxy.listening.port)
                await conn.send_all(raw_request({**CHAT, "stream": stream}, close=True))
                with trio.fail_after(5):  # the server must close the connection once the answer is out
                    received = await read_until_closed(conn)
                await conn.aclose()
                assert received.startswith(b"HTTP/1.1 200"), received[:200]
                if stream:  # chunked: the last event, then the zero-length chunk that ends the body
                    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), received[-200:]
            await trio.testing.wait_all_tasks_blocked()  # the last request's bookkeeping runs after the close
        samples = proxy.app.metrics.registry
        ok = samples.get_sample_value(
            "apikeyrouter_http_requests_total", {"route": "/v1/chat/completions", "status": "200"}
        )
        gone = samples.get_sample_value(
            "apikeyrouter_http_requests_total", {"route": "/v1/chat/completions", "status": "499"}
        )
    assert (ok, gone) == (5.0, None)
    assert [e["status"] for e in logs if e["event"] == "http_request"] == [200] * 5


@pytest.mark.parametrize("value", ["1e-320", "5e-324", "0.0000001", "-1", "-0", "0", "nan", "inf", "-inf", "soon", ""])
async def test_a_deadline_too_small_or_not_a_number_is_a_400_naming_the_header(value: str) -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post(
            "/v1/chat/completions", headers={**auth(), "x-apikeyrouter-deadline": value}, json=CHAT
        )
    error = assert_openai_error(response, 400)
    assert error["param"] == "x-apikeyrouter-deadline"


async def test_a_sane_small_deadline_is_honoured() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post(
            "/v1/chat/completions", headers={**auth(), "x-apikeyrouter-deadline": "0.5"}, json=CHAT
        )
    assert response.status_code == 200
