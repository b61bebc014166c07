"""The proxy's HTTP/1.1 server: h11 on trio sockets, one request at a time per connection.

Why our own: hypercorn-trio tops out near 2,000 hello-world requests/s on this machine and trio + h11 near
10,000; and a server of our own lets the app see a client leave at once (hypercorn never cancels a handler
whose client went away: the app had to watch for `http.disconnect` itself).

The interface to the app is two small objects, not ASGI: a `Request` (method, path, query, headers, a body
read on demand under a size limit) and a `Response` writer (`respond` for a whole answer in one write, or
`start` / `send` / `end` for a stream). A handler is `async def handler(request, response)`.

What a connection does, in order:
- keep-alive: after an answer, the next request on the same connection; pipelined requests are read ahead
  (up to `pipeline_bytes`) and answered in order, one at a time;
- deadlines: `keep_alive_s` for the first byte of the next request, then `header_read_s` for the rest of
  its head (a slowloris client is closed when it runs out), both from trio's clock;
- limits: a head larger than `max_header_bytes` is a 431, a malformed one a 400, each with a JSON body in
  the OpenAI error shape, and the connection closes; the body limit is the app's, given to `read_body`;
- `Expect: 100-continue` is answered when the app first reads the body (not for a body it refuses);
- client disconnect: once the body is read, the connection watches its socket; EOF or a reset cancels the
  handler at once (`request.client_gone` says so), which cancels its upstream call. A peer that closes
  after the last byte of the answer went out (`Connection: close`) is not a client that left;
- a request body the app did not read is drained (up to `drain_bytes`) to keep the connection, else closed.

Graceful drain (`serve_http`'s `shutdown_trigger`): stop accepting (the listeners close), close idle
keep-alive connections, answer `Connection: close` to anything that starts now, let requests in flight
(streams included) finish within `grace`, then cancel what is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from http import HTTPStatus
from urllib.parse import unquote

import attrs
import h11
import orjson
import structlog
import trio

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "Handler",
    "MalformedBody",
    "Request",
    "Response",
    "ServerLimits",
    "serve_http",
]

log = structlog.get_logger("apikeyrouter.proxy")

Headers = list[tuple[bytes, bytes]]
RECEIVE_BYTES = 65536


@attrs.frozen
class ServerLimits:
    """What one connection may cost the server."""

    max_header_bytes: int = 16 * 1024  # request line and headers; more is a 431
    header_read_s: float = 10.0  # from a request's first byte to the end of its head (slowloris)
    # Idle keep-alive: longer than the usual load balancer idle timeout (60 s), so the balancer closes first.
    keep_alive_s: float = 75.0
    backlog: int = 2048
    pipeline_bytes: int = 64 * 1024  # read ahead of the request being answered
    drain_bytes: int = 64 * 1024  # an unread body up to this size is discarded to keep the connection


class BodyTooLarge(Exception):
    """The request body is larger than the limit its reader gave."""


class ClientGone(Exception):
    """The client closed or reset the connection (while its body was read, or an answer written)."""


class MalformedBody(Exception):
    """The request body broke HTTP framing (a bad chunk, say); the connection closes after the answer."""


class Request:
    """One request's head, and its body on demand. Header names are lower-case bytes (h11 makes them so)."""

    __slots__ = (
        "_conn",
        "client_gone",
        "close_requested",
        "content_length",
        "head_bytes",
        "headers",
        "method",
        "path",
        "query",
        "target",
    )

    def __init__(self, conn: _Connection, event: h11.Request) -> None:
        self._conn = conn
        self.method: str = event.method.decode("ascii", "replace")
        self.target: bytes = event.target
        raw, _, self.query = event.target.partition(b"?")
        path = raw.decode("latin-1")
        self.path: str = unquote(path) if "%" in path else path
        self.headers: Headers = list(event.headers)
        self.content_length: int | None = None
        self.close_requested = False  # `Connection: close`
        size = len(event.method) + len(event.target) + 12
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                self.content_length = int(value)  # h11 has checked that it is a number
            elif name == b"connection" and b"close" in value.lower():
                self.close_requested = True
        self.head_bytes = size  # about the size on the wire (h11 limits only a head that came in pieces)
        # Set by the server before it cancels the handler: the client left before the answer was out.
        self.client_gone = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookies(self) -> dict[str, str]:
        """The `Cookie` header's pairs (the first of each name)."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            if key == b"cookie":
                for pair in value.decode("latin-1").split(";"):
                    name, eq, val = pair.strip().partition("=")
                    if eq and name and name not in out:
                        out[name] = val
        return out

    def body_complete(self) -> bool:
        """The whole body is here already (it came with the head): `read_body` will not wait."""
        return self._conn.body_complete()

    async def read_body(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes (before reading any when declared)."""
        return await self._conn.read_body(limit)


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class Response:
    """How a handler answers. `respond` sends a whole answer in one write; a stream is `start`, any number
    of `send`, then `end`. Header names are lower-case bytes; `respond` adds `content-length`, `start`
    chunked framing (close-delimited for an HTTP/1.0 client).

    Written here rather than through h11's writer, which validates every header with regular expressions
    at about the cost of parsing the request; values are checked for CR and LF (no header injection),
    names are our own code's literals."""

    __slots__ = ("_chunked", "_conn", "finished", "started", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.started = False  # the status line went out: from here on an error can only end the body
        self.finished = False  # the last byte is on its way
        self.status = 0
        self._chunked = False

    def _reset(self) -> None:
        self.started = self.finished = self._chunked = False
        self.status = 0

    async def respond(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        out = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        self.finished = True
        if self._conn.head_only:
            await self._conn.send_all(out)
        else:
            await self._conn.send_all(out + body)

    async def start(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        if self._conn.http10:
            self._conn.keep_alive = False  # an HTTP/1.0 client reads to the end of the connection
            framing = b""
        else:
            self._chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        await self._conn.send_all(self._head(status, headers, framing))

    async def send(self, data: bytes) -> None:
        if data:
            await self._conn.send_all(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    async def end(self, data: bytes = b"") -> None:
        self.finished = True
        if self._chunked:
            await self._conn.send_all((b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)) if data else b"0\r\n\r\n")
        elif data:
            await self._conn.send_all(data)

    def _head(self, status: int, headers: Sequence[tuple[bytes, bytes]], framing: bytes) -> bytes:
        if self.started:
            raise RuntimeError("the response has started already")
        conn = self._conn
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        for name, value in headers:
            if b"\n" in value or b"\r" in value:
                raise ValueError(f"header {name!r} has a CR or LF in its value")
            if name == b"connection" and value.lower() == b"close":
                conn.keep_alive = False
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(framing)
        if conn.server.draining:
            conn.keep_alive = False
        if not conn.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.started = True
        self.status = status
        return b"".join(parts)


Handler = Callable[[Request, Response], Awaitable[None]]


def protocol_error_body(status: int, message: str) -> bytes:
    """A refusal at the HTTP layer, in the OpenAI error shape like every other answer of the proxy."""
    code = {431: "request_header_fields_too_large", 413: "request_too_large"}.get(status, "bad_request")
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return orjson.dumps({"error": error})


class _Phase:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_IDLE, _HEAD, _BUSY = _Phase("idle"), _Phase("head"), _Phase("busy")


class _Connection:
    """One accepted socket. Two tasks: a reader that alone receives from the socket (it feeds h11, watches
    the deadlines and sees the client leave at once), and the serving loop that parses requests and runs the
    handler for each. Both live in the connection's nursery: cancelling it ends the connection."""

    __slots__ = (
        "_ahead",
        "_body_broken",
        "_body_done",
        "_deadline",
        "_first",
        "_nursery",
        "_paused",
        "_since",
        "_tightened",
        "_wake",
        "h11",
        "handling",
        "head_only",
        "http10",
        "keep_alive",
        "peer_closed",
        "phase",
        "request",
        "response",
        "server",
        "stream",
    )

    def __init__(self, server: HTTPServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.limits.max_header_bytes)
        self.response = Response(self)
        self.request: Request | None = None
        self.handling = False  # a handler runs: EOF before its answer is out is a client that left
        self.keep_alive = True  # the request being answered allows another after it
        self.http10 = False
        self.head_only = False  # a HEAD request: the answer's head without its body
        self.peer_closed = False
        self._nursery: trio.Nursery | None = None
        # Where the connection is, for its deadlines: IDLE (no byte of the next request yet; a drain closes
        # it at once), HEAD (a head is coming: `header_read_s`) or BUSY (a request is served: the handler's
        # own deadlines apply), and since when. The reader's cancel scope fires at or before the deadline
        # that applies; moving a deadline costs more than a request, so it is only ever moved earlier (a
        # slow head) and otherwise checked when it fires (`_reader`).
        self.phase = _IDLE
        self._since = trio.current_time()
        self._tightened = False
        self._deadline = trio.CancelScope()
        self._wake: trio.Event | None = None  # the serving loop waits for data
        self._paused: trio.Event | None = None  # the reader waits for the loop to consume what it read
        self._ahead = 0  # bytes received since the serving loop last ran out of data
        self._first = b""  # body bytes that came with the head
        self._body_done = False
        self._body_broken = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reader)
            try:
                await self._serve()
            finally:
                nursery.cancel_scope.cancel(reason="connection done")

    def close(self, reason: str) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason=reason)

    async def _serve(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            await self._answer(request)
            if not await self._next_cycle():
                return

    # -- the reader -------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.phase is _IDLE

    def _due(self) -> float:
        """When the deadline that applies now runs out."""
        limits = self.server.limits
        if self.phase is _IDLE:
            return self._since + limits.keep_alive_s
        if self.phase is _HEAD:
            return self._since + limits.header_read_s
        return trio.current_time() + limits.keep_alive_s  # BUSY: look again later

    async def _reader(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._due()) as scope:
                self._deadline = scope
                await self._read()
                return
            if trio.current_time() >= self._due():
                self.close("request head deadline")  # idle keep-alive ran out, or a head came too slowly
                return

    async def _read(self) -> None:
        limit = self.server.limits.pipeline_bytes
        while True:
            if self._ahead >= limit:  # read far enough ahead: wait (a disconnect shows when writing)
                self._paused = trio.Event()
                await self._paused.wait()
            data = await self._receive()
            if not data:
                self._peer_left()
                return
            if self.phase is _IDLE:
                self.phase = _HEAD
                self._since = trio.current_time()
            self.h11.receive_data(data)  # not a local: `_next_cycle` swaps the parser
            self._ahead += len(data)
            if self._wake is not None:
                self._wake.set()

    def _peer_left(self) -> None:
        self.peer_closed = True
        if self.handling and not self.response.finished and self.request is not None:
            self.request.client_gone = True
            self.close("client disconnected")
            return
        self.h11.receive_data(b"")  # after the answer: whatever was pipelined is still read, then close
        if self._wake is not None:
            self._wake.set()

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""  # a reset is the peer leaving, like EOF

    async def _need_data(self) -> None:
        """Wait for the reader to bring more (h11 has used up what it had)."""
        self._ahead = 0
        if self._paused is not None:
            self._paused.set()
            self._paused = None
        wake = self._wake = trio.Event()
        try:
            await wake.wait()
        finally:
            self._wake = None

    # -- reading requests -------------------------------------------------------------------------------

    async def _next_request(self) -> Request | None:
        h = self.h11
        limits = self.server.limits
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    if self.peer_closed:
                        return None
                    if self.phase is _HEAD and not self._tightened:  # a head in pieces: its deadline applies
                        self._tightened = True
                        self._deadline.deadline = min(self._deadline.deadline, self._due())
                    await self._need_data()
                    continue
                if type(event) is h11.Request:
                    request = self._begin(event)
                    if request.head_bytes > limits.max_header_bytes:
                        await self._refuse(431, "")
                        return None
                    return request
                return None  # ConnectionClosed (or PAUSED after a peer that closed)
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, str(exc))
            return None

    def _begin(self, event: h11.Request) -> Request:
        self.phase = _BUSY
        self._tightened = False
        self.http10 = event.http_version == b"1.0"
        self.head_only = event.method == b"HEAD"
        self._first = b""
        self._body_done = self._body_broken = False
        request = self.request = Request(self, event)
        self.keep_alive = not self.http10 and not request.close_requested
        # A body that came with the head (or none at all) is here already: peek without waiting.
        try:
            while True:
                more = self.h11.next_event()
                if type(more) is h11.Data:
                    self._first += bytes(more.data)
                    continue
                if type(more) is h11.EndOfMessage:
                    self._body_done = True
                break
        except h11.RemoteProtocolError:
            self._body_broken = True
        return request

    def body_complete(self) -> bool:
        return self._body_done

    async def read_body(self, limit: int) -> bytes:
        request = self.request
        assert request is not None
        if self._body_done:
            if len(self._first) > limit:
                raise BodyTooLarge
            return self._first
        if self._body_broken:
            raise MalformedBody("the request body is not valid HTTP framing")
        declared = request.content_length
        if (declared is not None and declared > limit) or len(self._first) > limit:
            self._body_broken = True  # unread: the connection closes after the answer
            raise BodyTooLarge
        h = self.h11
        try:
            if h.they_are_waiting_for_100_continue:
                await self.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_rest(limit)
        except BaseException:
            self._body_broken = True
            raise
        self._body_done = True
        return body

    async def _read_rest(self, limit: int) -> bytes:
        h = self.h11
        parts = [self._first]
        size = len(self._first)
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if self.peer_closed:
                    raise ClientGone from None
                raise MalformedBody(str(exc)) from None
            if event is h11.NEED_DATA:
                if self.peer_closed:
                    raise ClientGone
                await self._need_data()
            elif type(event) is h11.Data:
                size += len(event.data)
                if size > limit:
                    raise BodyTooLarge
                parts.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                return b"".join(parts)
            else:
                raise ClientGone

    # -- answering --------------------------------------------------------------------------------------

    async def _answer(self, request: Request) -> None:
        response = self.response
        self.handling = True
        try:
            await self.server.handler(request, response)
        except ClientGone:
            request.client_gone = True
        except Exception as exc:
            log.error("handler_failed", path=request.path, exc_info=exc)
            if not response.started:
                await self._plain_error(500, "internal error in apikeyrouter (see the server log)")
        else:
            if not response.started and not request.client_gone:
                log.error("handler_returned_without_answering", path=request.path)
                await self._plain_error(500, "internal error in apikeyrouter (see the server log)")
        finally:
            self.handling = False

    async def _plain_error(self, status: int, message: str) -> None:
        headers = [(b"content-type", b"application/json")]
        with contextlib.suppress(ClientGone, RuntimeError):
            await self.response.respond(status, headers, protocol_error_body(status, message))

    async def _next_cycle(self) -> bool:
        h = self.h11
        if not self.response.finished or self._body_broken or not self.keep_alive or self.server.draining:
            return False
        if h.their_state is h11.SEND_BODY and not await self._discard_body():
            return False
        if h.their_state is not h11.DONE:
            return False
        # h11 parses; the answers are ours (`Response`), so each request gets a fresh parser (cheap) fed
        # with what came after the last one.
        data, closed = h.trailing_data
        h = self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.server.limits.max_header_bytes)
        if data:
            h.receive_data(data)
        if closed:
            h.receive_data(b"")
        self.response._reset()
        self.phase = _HEAD if data else _IDLE  # some of the next request is here already
        self._since = trio.current_time()
        return True

    async def _discard_body(self) -> bool:
        """Read and drop a body the handler did not read, if it is small and comes quickly."""
        h = self.h11
        if h.they_are_waiting_for_100_continue:
            return False  # the client holds its body back: it must not be sent now
        left = self.server.limits.drain_bytes
        with trio.move_on_after(self.server.limits.header_read_s):
            while left >= 0:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError:
                    return False
                if event is h11.NEED_DATA:
                    if self.peer_closed:
                        return False
                    await self._need_data()
                elif type(event) is h11.Data:
                    left -= len(event.data)
                else:
                    return type(event) is h11.EndOfMessage
        return False

    async def _refuse(self, status: int, reason: str) -> None:
        """Answer a request h11 could not parse, then close."""
        if self.response.started:
            return
        self.keep_alive = False
        message = {
            431: f"the request line and headers are larger than {self.server.limits.max_header_bytes} bytes",
        }.get(status, f"malformed HTTP request: {reason}")
        body = protocol_error_body(status, message)
        headers = [(b"content-type", b"application/json")]
        with contextlib.suppress(ClientGone), trio.move_on_after(self.server.limits.header_read_s):
            await self.response.respond(status, headers, body)

    async def send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.peer_closed = True
            raise ClientGone from None


class HTTPServer:
    """The accepted connections of one `serve_http`, for the drain to find the idle ones."""

    def __init__(self, handler: Handler, limits: ServerLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.draining = False
        self._connections: set[_Connection] = set()
        self._emptied = trio.Event()

    async def connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        self._connections.add(conn)
        try:
            await conn.run()
        except ClientGone:
            pass
        finally:
            self._connections.discard(conn)
            if self.draining and not self._connections:
                self._emptied.set()
            await trio.aclose_forcefully(stream)

    def drain(self) -> None:
        self.draining = True
        for conn in self._connections:
            if conn.idle:
                conn.close("server shutting down")
        if not self._connections:
            self._emptied.set()

    async def wait_emptied(self) -> None:
        await self._emptied.wait()


async def serve_http(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    limits: ServerLimits,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    grace: float = 10.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on `listeners` until `shutdown_trigger` returns, then drain for up to `grace`."""
    server = HTTPServer(handler, limits)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            await accepting.start(
                partial(trio.serve_listeners, server.connection, listeners, handler_nursery=connections)
            )
            task_status.started()
            if shutdown_trigger is None:
                await trio.sleep_forever()
            else:
                await shutdown_trigger()
            accepting.cancel_scope.cancel(reason="server shutting down")  # closes the listeners
        server.drain()
        with trio.move_on_after(grace):
            await server.wait_emptied()
        connections.cancel_scope.cancel(reason=f"shutdown grace of {grace:g}s ran out")
