"""`H11Transport` against real HTTP/1.1 servers on 127.0.0.1: keep-alive, the bounded LIFO pool, the stale
connection rule, body framing, TLS, cancellation, timeouts, and streams that give their connection back."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.adapters.sockio import SocketIO
from apikeyrouter.adapters.transport import H11Transport
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import UpstreamError
from apikeyrouter.secret import Secret
from tests.h11_upstream import Exchange, upstream


def client(limits: httpx.Limits | None = None, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=H11Transport(limits=limits, **kwargs), trust_env=False)  # type: ignore[arg-type]


# -- keep-alive and the pool ----------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    async with upstream() as up, client() as http:
        for i in range(20):
            r = await http.post(f"{up.url}/n/{i}", content=b"x")
            assert r.text == f"conn 1 POST /n/{i}"
    assert up.accepted == 1


async def test_the_most_recently_returned_connection_is_used_first() -> None:
    both_in = trio.Event()
    first_answered = trio.Event()

    async def handler(ex: Exchange) -> None:
        if ex.target == "/a":
            await both_in.wait()
        elif ex.target == "/b":
            both_in.set()
            await first_answered.wait()
        await ex.respond(f"{ex.conn_id}".encode())

    async with upstream(handler) as up, client() as http:
        got: dict[str, str] = {}

        async def get(path: str) -> None:
            got[path] = (await http.get(up.url + path)).text
            if path == "/a":
                first_answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "/a")
            await up.wait_for(lambda: len(up.requests) == 1)
            nursery.start_soon(get, "/b")
        # /a's connection went back first, /b's last: the next request takes /b's.
        assert (await http.get(up.url + "/c")).text == got["/b"]
        assert (await http.get(up.url + "/d")).text == got["/b"]
    assert up.accepted == 2


async def test_callers_beyond_the_bound_wait_for_a_connection() -> None:
    gate = trio.Event()
    in_flight = peak = 0

    async def handler(ex: Exchange) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        await ex.respond(b"done")

    async with upstream(handler) as up, client(httpx.Limits(max_connections=2)) as http:
        answers: list[str] = []

        async def get() -> None:
            answers.append((await http.get(up.url)).text)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(get)
            await up.wait_for(lambda: len(up.requests) == 2)
            await trio.testing.wait_all_tasks_blocked()
            assert len(up.requests) == 2  # the six others wait for a slot, not for a new connection
            gate.set()
    assert answers == ["done"] * 8
    assert up.accepted == 2
    assert peak == 2


async def test_an_idle_connection_past_keepalive_expiry_is_not_reused(mock_clock: trio.testing.MockClock) -> None:
    limits = httpx.Limits(max_connections=4, keepalive_expiry=30.0)
    async with upstream() as up, client(limits) as http:
        await http.get(up.url)
        mock_clock.jump(29.9)
        await http.get(up.url)
        mock_clock.jump(30.0)
        await http.get(up.url)
        await up.wait_for(lambda: up.client_closed == [1])
    assert up.conn_ids() == [1, 1, 2]


# -- stale connections: retried only when nothing was sent ----------------------------------------------


async def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    async def handler(ex: Exchange) -> None:
        await ex.respond(b"bye")
        if ex.conn_id == 1:
            ex.abort()  # no `Connection: close`: the client learns it only from the socket

    async with upstream(handler) as up, client() as http:
        await http.get(up.url + "/1")
        await up.wait_for(lambda: up.requests[0].aborted)  # its FIN is in the client's socket now
        r = await http.get(up.url + "/2")
    assert r.text == "bye"
    assert [(r.conn_id, r.target) for r in up.requests] == [(1, "/1"), (2, "/2")]


async def test_a_request_whose_bytes_were_sent_is_not_retried() -> None:
    async def handler(ex: Exchange) -> None:
        if ex.target == "/1":
            await ex.respond(b"first")
        else:
            ex.abort()  # read the request, then hang up without an answer

    async with upstream(handler) as up, client() as http:
        await http.post(up.url + "/1", content=b"a")
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(up.url + "/2", content=b"b")
    assert [(r.conn_id, r.target) for r in up.requests] == [(1, "/1"), (1, "/2")]


async def test_after_a_stale_connection_the_new_one_is_the_only_retry() -> None:
    async def handler(ex: Exchange) -> None:
        if ex.target == "/1":
            await ex.respond(b"first")
        ex.abort()

    async with upstream(handler) as up, client() as http:
        await http.get(up.url + "/1")
        await up.wait_for(lambda: up.requests[0].aborted)
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(up.url + "/2")
    assert [(r.conn_id, r.target) for r in up.requests] == [(1, "/1"), (2, "/2")]


# -- bodies and framing ---------------------------------------------------------------------------------


async def test_request_bodies_arrive_whole_with_length_or_chunked() -> None:
    async def echo(ex: Exchange) -> None:
        framing = dict(ex.headers)
        how = "chunked" if framing.get(b"transfer-encoding") == b"chunked" else "length"
        await ex.respond(how.encode() + b":" + ex.body)

    big = bytes(range(256)) * 800

    async def parts() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part{i};".encode()

    async with upstream(echo) as up, client() as http:
        r = await http.post(up.url, content=big)
        assert r.content == b"length:" + big
        r = await http.post(up.url, content=parts())
        assert r.content == b"chunked:part0;part1;part2;part3;part4;"
        r = await http.get(up.url)
        assert r.content == b"length:"
    assert up.accepted == 1


async def test_a_chunked_response_is_read_whole_and_keeps_the_connection() -> None:
    async def chunked(ex: Exchange) -> None:
        await ex.respond_chunked([b"alpha ", b"beta ", b"gamma"], headers=[("x-n", str(ex.conn_id))])

    async with upstream(chunked) as up, client() as http:
        for _ in range(3):
            r = await http.get(up.url)
            assert r.content == b"alpha beta gamma"
            assert r.headers["x-n"] == "1"
            assert r.http_version == "HTTP/1.1"
    assert up.accepted == 1


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def closing(ex: Exchange) -> None:
        await ex.respond(b"once", headers=[("connection", "close")])

    transport = H11Transport()
    async with upstream(closing) as up, httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(up.url)).text == "once"
        (stats,) = transport.stats().values()
        assert stats.idle == 0
        assert (await http.get(up.url)).text == "once"
    assert up.conn_ids() == [1, 2]


async def test_the_server_closing_mid_response_is_a_typed_error_and_its_connection_is_dropped() -> None:
    async def cut(ex: Exchange) -> None:
        if ex.target == "/cut":
            await ex.send(h11.Response(status_code=200, headers=[("content-length", "100")]), h11.Data(data=b"x" * 10))
            ex.abort()
        else:
            await ex.respond(b"whole")

    async with upstream(cut) as up, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(up.url + "/cut")
        assert (await http.get(up.url + "/next")).text == "whole"
    assert up.conn_ids() == [1, 2]


async def test_connection_refused_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: nothing accepts there
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")


# -- streamed bodies ------------------------------------------------------------------------------------


async def test_a_stream_read_to_the_end_returns_its_connection() -> None:
    async def chunked(ex: Exchange) -> None:
        await ex.respond_chunked([b"a", b"b"])

    async with upstream(chunked) as up, client(httpx.Limits(max_connections=4)) as http:
        for _ in range(200):
            async with http.stream("GET", up.url) as r:
                assert b"".join([part async for part in r.aiter_bytes()]) == b"ab"
    assert up.accepted == 1


async def test_a_paced_stream_waits_for_each_piece_without_a_read_that_finds_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read that empties the socket (shorter than asked), or a request just sent, means nothing is there
    # yet: the next read waits first instead of trying the socket and catching BlockingIOError each time.
    empty_reads = 0
    try_read = SocketIO.receive_nowait

    def counted(io: SocketIO, max_bytes: int) -> bytes | None:
        nonlocal empty_reads
        data = try_read(io, max_bytes)
        empty_reads += data is None
        return data

    monkeypatch.setattr(SocketIO, "receive_nowait", counted)

    async def paced(ex: Exchange) -> None:
        await ex.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
        for piece in (b"one ", b"two ", b"three"):
            await trio.sleep(0.01)
            await ex.send(h11.Data(data=piece))
        await trio.sleep(0.01)
        await ex.send(h11.EndOfMessage())

    async with upstream(paced) as up, client() as http:
        for _ in range(2):
            async with http.stream("GET", up.url) as r:
                assert [part async for part in r.aiter_bytes()] == [b"one ", b"two ", b"three"]
    assert empty_reads == 0
    assert up.accepted == 1


async def test_a_stream_closed_early_closes_its_connection() -> None:
    async def endless(ex: Exchange) -> None:
        if ex.target == "/endless":
            await ex.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
            await ex.send(h11.Data(data=b"first"))
            while True:  # until the client hangs up: the upstream's send fails
                await trio.sleep(0.005)
                await ex.send(h11.Data(data=b"more"))
        await ex.respond(b"fresh")

    async with upstream(endless) as up, client() as http:
        async with http.stream("GET", up.url + "/endless") as r:
            async for part in r.aiter_bytes():
                assert part == b"first"
                break
        await up.wait_for(lambda: up.client_closed == [1])
        assert (await http.get(up.url + "/next")).text == "fresh"
    assert up.conn_ids() == [1, 2]


# -- cancellation and timeouts --------------------------------------------------------------------------


async def test_a_cancelled_request_closes_its_connection_and_leaks_nothing() -> None:
    async def hang_first(ex: Exchange) -> None:
        if ex.target == "/hang":
            await ex.until_client_hangs_up()
        await ex.respond(b"after")

    transport = H11Transport(limits=httpx.Limits(max_connections=1))
    async with upstream(hang_first) as up, httpx.AsyncClient(transport=transport) as http:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(http.get, up.url + "/hang")
                await up.wait_for(lambda: len(up.requests) == 1)
                scope.cancel()
        await up.wait_for(lambda: up.client_closed == [1])
        (stats,) = transport.stats().values()
        assert (stats.idle, stats.in_flight) == (0, 0)
        # The only slot is free again: a request gets through on a new connection.
        assert (await http.get(up.url + "/next")).text == "after"
    assert up.conn_ids() == [1, 2]


async def test_the_read_timeout_raises_read_timeout_at_its_deadline(mock_clock: trio.testing.MockClock) -> None:
    async def never(ex: Exchange) -> None:
        await trio.sleep_forever()

    timeout = httpx.Timeout(5.0, read=10.0)
    async with upstream(never) as up, httpx.AsyncClient(transport=H11Transport(), timeout=timeout) as http:
        raised_at: list[float] = []

        async def get() -> None:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(up.url)
            raised_at.append(trio.current_time())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get)
            await up.wait_for(lambda: len(up.requests) == 1)
            mock_clock.jump(9.5)
            await trio.testing.wait_all_tasks_blocked()
            assert raised_at == []
            mock_clock.jump(0.5)
    assert raised_at == [start + 10.0]


async def test_waiting_for_a_slot_past_the_pool_timeout_is_a_pool_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def never(ex: Exchange) -> None:
        await trio.sleep_forever()

    timeout = httpx.Timeout(60.0, pool=2.0)
    transport = H11Transport(limits=httpx.Limits(max_connections=1))
    async with upstream(never) as up, httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        raised_at: list[float] = []

        async def second() -> None:
            with pytest.raises(httpx.PoolTimeout):
                await http.get(up.url)
            raised_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.get, up.url)
            await up.wait_for(lambda: len(up.requests) == 1)
            start = trio.current_time()
            async with trio.open_nursery() as waiting:
                waiting.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(1.9)
                await trio.testing.wait_all_tasks_blocked()
                assert raised_at == []
                mock_clock.jump(0.1)
            nursery.cancel_scope.cancel()
    assert raised_at == [start + 2.0]
    assert up.accepted == 1


# -- TLS ------------------------------------------------------------------------------------------------


@attrs.frozen
class CA:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """A throwaway CA and a certificate it signed for 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("ca")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=apikeyrouter test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1")
    (d / "leaf.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")  # fmt: skip
    return CA(d / "ca.pem", d / "leaf.pem", d / "leaf.key")


def server_context(ca: CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ca.cert, ca.key)
    return ctx


async def test_tls_to_a_server_the_given_context_trusts(test_ca: CA) -> None:
    trusting = ssl.create_default_context(cafile=str(test_ca.ca))
    async with upstream(tls=server_context(test_ca)) as up, client(ssl_context=trusting) as http:
        assert up.url.startswith("https://")
        for _ in range(3):
            assert (await http.get(up.url + "/secure")).text == "conn 1 GET /secure"
    assert up.accepted == 1


async def test_tls_verification_failure_is_a_connection_error(test_ca: CA) -> None:
    async with upstream(tls=server_context(test_ca)) as up:
        async with client() as http:  # the system's CAs: they never signed our test CA
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(up.url)
        adapter = OpenAIAdapter(base_url=up.url + "/v1")  # the adapters' own client, default context
        async with adapter.make_client() as http:
            with pytest.raises(UpstreamError) as info:
                await adapter.complete(http, INTENT, Secret("sk-test-0123456789"))
    assert info.value.failure is FailureClass.CONNECTION


# -- through the adapters -------------------------------------------------------------------------------

INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),), max_tokens=8)


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CHUNK = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}  # fmt: skip
LAST = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip


async def sse_upstream(ex: Exchange) -> None:
    await ex.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream"),
                                                        ("transfer-encoding", "chunked")]))  # fmt: skip
    await ex.send(h11.Data(data=sse(CHUNK)), h11.Data(data=sse(LAST)), h11.Data(data=b"data: [DONE]\n\n"))
    await trio.sleep(0.001)  # the chunked terminator comes in its own packet, after the end marker
    await ex.send(h11.EndOfMessage())


async def test_adapter_streams_read_to_done_reuse_their_connection() -> None:
    adapter = OpenAIAdapter(base_url="http://placeholder/v1", limits=httpx.Limits(max_connections=4))
    async with upstream(sse_upstream) as up:
        adapter.base_url = up.url + "/v1"
        async with adapter.make_client() as http:
            for _ in range(200):
                async with adapter.open_stream(http, INTENT, Secret("sk-test-0123456789")) as stream:
                    texts = [chunk.delta async for chunk in stream]
                assert "".join(texts) == "hello"
    assert up.accepted <= 4
    assert up.accepted == 1  # sequential streams: one connection serves them all


async def test_adapter_requests_use_the_h11_transport_by_default() -> None:
    body = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    async def completion(ex: Exchange) -> None:
        assert json.loads(ex.body)["model"] == "gpt-4o-mini"
        await ex.respond(json.dumps(body).encode(), headers=[("content-type", "application/json")])

    async with upstream(completion) as up:
        adapter = OpenAIAdapter(base_url=up.url + "/v1")
        assert isinstance(adapter.make_transport(), H11Transport)
        async with adapter.make_client() as http:
            for _ in range(5):
                result = await adapter.complete(http, INTENT, Secret("sk-test-0123456789"))
                assert result.response.content == "yo"
    assert up.accepted == 1
    assert {r.target for r in up.requests} == {"/v1/chat/completions"}
