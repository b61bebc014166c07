"""The proxy's HTTP/1.1 server (`proxy/http11.py`) on real sockets on 127.0.0.1, spoken to byte by byte.

Limits and deadlines: an oversized head is a 431, a malformed one a 400 (both JSON in the OpenAI error
shape; one a front proxy could read differently, a smuggling attempt, is refused before the handler sees
it), a body over the app's limit a 413, a slow head and an idle keep-alive connection are closed at their
deadlines (virtual time). Protocol: keep-alive reuse, pipelined requests answered in order, `Expect:
100-continue`, chunked bodies, an unread body drained to keep the connection. A client that leaves cancels
its handler at once; a drain closes idle connections and lets a stream finish.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter.domain.request import StreamChunk
from apikeyrouter.proxy import Listening, ProxyApp, ServerLimits, serve_proxy
from apikeyrouter.proxy.http11 import Request, Response
from apikeyrouter.secret import Secret
from tests.proxy_fakes import CHAT, CLIENT_TOKEN, FakeRouter

LIMITS = ServerLimits(max_header_bytes=4096, header_read_s=2.0, keep_alive_s=5.0)
CHAT_BODY = json.dumps(CHAT).encode()


class Seen:
    """What the test handler saw: requests answered, and whether a handler was cancelled by its client leaving."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.entered = trio.Event()
        self.cancelled_gone: bool | None = None


def handler(seen: Seen) -> Any:
    async def handle(request: Request, response: Response) -> None:
        if request.path == "/hold":
            await request.read_body(1024)
            seen.entered.set()
            try:
                await trio.sleep_forever()
            finally:
                seen.cancelled_gone = request.client_gone
        if request.path == "/unread":
            await response.respond(200, [], b"not reading that")
            return
        body = await request.read_body(1024)
        seen.bodies.append(body)
        answer = f"{request.method} {request.path} {request.header(b'x-n')!r} {len(body)}".encode()
        await response.respond(200, [(b"content-type", b"text/plain")], answer)

    return handle


@asynccontextmanager
async def server(app: Any, limits: ServerLimits = LIMITS, grace: float = 5.0) -> AsyncIterator[tuple[int, trio.Event]]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(
            partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=stop.wait, grace=grace, limits=limits)
        )
        try:
            yield listening.port, stop
        finally:
            stop.set()


class Answer:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(stream: trio.SocketStream, buf: bytearray) -> Answer:
    """One content-length framed answer off `stream`; what follows it stays in `buf`."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(buf))
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers.get(b"content-length", b"0"))
    while len(buf) < end + 4 + length:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(buf))
        buf += data
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return Answer(status, headers, body)


async def closed(stream: trio.SocketStream) -> bool:
    """The server closed the connection (EOF or reset), after whatever it still had to say."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


def get(path: str, n: str = "", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: t\r\nx-n: {n}\r\n{extra}\r\n".encode()


def openai_error(answer: Answer) -> dict[str, Any]:
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert answer.headers[b"content-type"] == b"application/json"
    return dict(body["error"])


# -- limits and malformed requests ---------------------------------------------------------------------------


async def test_an_oversized_head_is_a_431_in_the_openai_shape_and_the_connection_closes() -> None:
    async with server(handler(Seen())) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n")
        answer = await read_answer(s, bytearray())
        assert answer.status == 431
        assert openai_error(answer)["code"] == "request_header_fields_too_large"
        assert await closed(s)


@pytest.mark.parametrize(
    "raw",
    [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"],
    ids=["request line", "header line", "no host"],
)
async def test_a_malformed_request_is_a_400_in_the_openai_shape(raw: bytes) -> None:
    async with server(handler(Seen())) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(raw)
        answer = await read_answer(s, bytearray())
        assert answer.status == 400
        error = openai_error(answer)
        assert error["type"] == "invalid_request_error" and error["message"].startswith("malformed HTTP request")
        assert await closed(s)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nGET ", 400),
        (b"GET / HTTP/1.1\r\nhost: t\r\nx-a: 1\r\n x-b: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nhost: t\n\n", 400),
        (b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
    ],
    ids=["CL and TE", "two CL", "obs-fold", "bare LF", "TE not chunked"],
)
async def test_a_request_a_front_proxy_could_read_differently_is_refused_and_closed(raw: bytes, status: int) -> None:
    seen = Seen()
    async with server(handler(seen)) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        # What follows would be a second, smuggled request if the head were taken.
        await s.send_all(raw + b"GET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n")
        answer = await read_answer(s, bytearray())
        assert answer.status == status
        assert openai_error(answer)["message"].startswith("malformed HTTP request")
        assert await closed(s)
    assert seen.bodies == []  # the handler saw neither request


async def test_a_body_over_the_apps_limit_is_a_413_declared_or_chunked() -> None:
    app = ProxyApp(FakeRouter(), client_tokens=[Secret(CLIENT_TOKEN)], max_body_bytes=100, log_requests=False)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n"
    async with server(app) as (port, _):
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            await s.send_all(f"{head}content-length: 100000\r\n\r\n".encode())  # the body never comes
            answer = await read_answer(s, bytearray())
            assert answer.status == 413 and openai_error(answer)["code"] == "request_too_large"
            assert await closed(s)  # the unread body is not waited for
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            chunk = b"x" * 80
            await s.send_all(f"{head}transfer-encoding: chunked\r\n\r\n".encode() + b"50\r\n" + chunk + b"\r\n")
            await s.send_all(b"50\r\n" + chunk + b"\r\n0\r\n\r\n")
            answer = await read_answer(s, bytearray())
            assert answer.status == 413 and openai_error(answer)["code"] == "request_too_large"


async def test_a_slow_head_is_closed_at_the_header_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with server(handler(Seen())) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await trio.sleep(1.0)  # idle before the first byte: within keep_alive_s
        await s.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n")  # ...and the rest never comes
        sent = trio.current_time()
        assert await closed(s)
        assert trio.current_time() - sent == pytest.approx(LIMITS.header_read_s, abs=0.01)


async def test_an_idle_keep_alive_connection_is_closed_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with server(handler(Seen())) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(get("/a"))
        assert (await read_answer(s, bytearray())).status == 200
        answered = trio.current_time()
        assert await closed(s)
        assert trio.current_time() - answered == pytest.approx(LIMITS.keep_alive_s, abs=0.01)


# -- protocol ---------------------------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    seen = Seen()
    async with server(handler(seen)) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        buf = bytearray()
        for i in range(5):
            await s.send_all(get("/k", str(i)))
            answer = await read_answer(s, buf)
            assert answer.body == f"GET /k b'{i}' 0".encode()
    assert len(seen.bodies) == 5


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with server(handler(Seen())) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        post = b"POST /p HTTP/1.1\r\nhost: t\r\nx-n: 2\r\ncontent-length: 5\r\n\r\nhello"
        await s.send_all(get("/p", "1") + post + get("/p", "3"))
        buf = bytearray()
        answers = [(await read_answer(s, buf)).body for _ in range(3)]
    assert answers == [b"GET /p b'1' 0", b"POST /p b'2' 5", b"GET /p b'3' 0"]


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    seen = Seen()
    async with server(handler(seen)) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(b"POST /c HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        interim = await s.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        assert seen.bodies == []
        await s.send_all(b"body")
        answer = await read_answer(s, bytearray())
        assert answer.status == 200 and answer.body == b"POST /c None 4"


async def test_a_chunked_body_reaches_the_app_whole() -> None:
    router = FakeRouter()
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)], log_requests=False)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n"
    half = len(CHAT_BODY) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (CHAT_BODY[:half], CHAT_BODY[half:]))
    async with server(app) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(f"{head}transfer-encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
        answer = await read_answer(s, bytearray())
    assert answer.status == 200 and answer.json()["object"] == "chat.completion"
    [(intent, _, _)] = router.calls
    assert intent.messages[0].content == "Say hello"


async def test_a_body_the_handler_did_not_read_is_drained_and_the_connection_kept() -> None:
    seen = Seen()
    async with server(handler(seen)) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(b"POST /unread HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n0123456789" + get("/after"))
        buf = bytearray()
        assert (await read_answer(s, buf)).body == b"not reading that"
        assert (await read_answer(s, buf)).body == b"GET /after b'' 0"


# -- a client that leaves, a server that stops ------------------------------------------------------------


async def test_a_client_that_leaves_cancels_its_handler_at_once() -> None:
    seen = Seen()
    async with server(handler(seen)) as (port, _):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(get("/hold"))
        await seen.entered.wait()
        left = trio.current_time()
        await s.aclose()
        with trio.fail_after(2):
            while seen.cancelled_gone is None:
                await trio.sleep(0.001)
        assert trio.current_time() - left < 0.5
    assert seen.cancelled_gone is True


async def test_a_drain_closes_idle_connections_at_once_and_lets_a_stream_finish() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"{i},") for i in range(5)]
    router.stream_delay = 0.05
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)], log_requests=False)
    body = json.dumps({**CHAT, "stream": True}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with server(app, grace=5.0) as (port, stop):
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(get("/health"))
        assert (await read_answer(idle, bytearray())).status == 200
        streaming = await trio.open_tcp_stream("127.0.0.1", port)
        await streaming.send_all(request)
        await router.stream_started.wait()
        stop.set()
        with trio.fail_after(1):
            assert await closed(idle)
        received = b""
        with trio.fail_after(5):
            while chunk := await streaming.receive_some(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in received and received.endswith(b"0\r\n\r\n")  # the whole stream, then closed
    assert all(f'"{i},"'.encode() in received for i in range(5))
    assert not router.stream_cancelled.is_set()


async def test_an_http10_client_and_a_head_request_get_answers_they_can_frame() -> None:
    async with server(handler(Seen())) as (port, _):
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            await s.send_all(b"GET /old HTTP/1.0\r\n\r\n")
            answer = await read_answer(s, bytearray())
            assert answer.status == 200 and answer.headers[b"connection"] == b"close"
            assert await closed(s)  # HTTP/1.0 has no keep-alive here
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            await s.send_all(b"HEAD /h HTTP/1.1\r\nhost: t\r\n\r\n" + get("/after"))
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                buf += await s.receive_some(65536)
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 14" in head  # "HEAD /h None 0", not sent
            answer = await read_answer(s, bytearray(rest))  # no body came between the two answers
            assert answer.body == b"GET /after b'' 0"


async def test_a_refused_body_already_sent_does_not_reset_the_answer_away() -> None:
    # Closing a socket with unread bytes resets the connection: the client, still sending its body, lost
    # the 413 (httpx: "Server disconnected without sending a response").
    app = ProxyApp(FakeRouter(), client_tokens=[Secret(CLIENT_TOKEN)], max_body_bytes=1000, log_requests=False)
    body = b"x" * 300_000
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    async with server(app) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(head + body)
        await trio.sleep(0.2)  # the answer and the close are out before we read
        answer = await read_answer(s, bytearray())
        assert answer.status == 413 and openai_error(answer)["code"] == "request_too_large"
        assert await closed(s)


async def test_an_answer_before_the_body_was_read_says_the_connection_closes() -> None:
    # The 413 went out without `Connection: close`: httpx pooled the connection the server then closed,
    # and its next request got "Server disconnected without sending a response".
    app = ProxyApp(FakeRouter(), client_tokens=[Secret(CLIENT_TOKEN)], max_body_bytes=100, log_requests=False)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n"
    async with server(app) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(f"{head}content-length: 100000\r\n\r\n".encode())
        answer = await read_answer(s, bytearray())
        assert answer.status == 413 and answer.headers[b"connection"] == b"close"


async def test_an_answer_larger_than_the_socket_buffer_reaches_a_slow_reader_whole() -> None:
    # The server writes without trio's socket wrapper: a write the kernel takes only in part must wait for
    # room and go on from where it stopped, however slowly the client reads.
    big = bytes(range(256)) * (24 * 1024)  # 6 MiB, far beyond loopback's socket buffers

    async def app(request: Request, response: Response) -> None:
        await response.respond(200, [(b"content-type", b"application/octet-stream")], big)

    async with server(app) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        for _ in range(2):  # twice: the connection is kept after an answer written in many pieces
            await s.send_all(get("/big"))
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                buf += await s.receive_some(4096)
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and f"content-length: {len(big)}".encode() in head
            body = bytearray(rest)
            with trio.fail_after(10):  # a write that stopped early would leave this waiting
                while len(body) < len(big):
                    body += await s.receive_some(256 * 1024)
                    await trio.sleep(0.001)  # a slow reader: the server's writes keep finding the buffer full
            assert body == big


async def test_a_client_that_leaves_in_the_middle_of_a_large_answer_ends_its_connection_cleanly() -> None:
    finished = trio.Event()
    outcome: list[str] = []

    async def app(request: Request, response: Response) -> None:
        try:
            await response.respond(200, [], b"x" * (32 * 1024 * 1024))
            outcome.append("sent")
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        finally:
            finished.set()

    async with server(app) as (port, _):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(get("/huge"))
        await s.receive_some(65536)  # the answer has started
        s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await s.aclose()  # a reset, with most of the answer still to come
        with trio.fail_after(5):
            await finished.wait()
    assert outcome == ["ClientGone"]


async def test_a_header_value_with_a_line_break_is_refused_not_written() -> None:
    refused: list[str] = []

    async def app(request: Request, response: Response) -> None:
        try:
            await response.respond(200, [(b"x-echo", b"ok\r\nset-cookie: injected=1")], b"")
        except ValueError as exc:
            refused.append(str(exc))
            raise

    async with server(app) as (port, _), await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(get("/echo"))
        answer = await read_answer(s, bytearray())
    assert answer.status == 500 and b"set-cookie" not in answer.headers
    assert refused == ["header b'x-echo' has a CR or LF in it"]
