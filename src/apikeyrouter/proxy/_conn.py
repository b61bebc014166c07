"""The connections of `http11`'s server: reading requests, answering them, deadlines, disconnect, drain.

See `http11` for what a connection does; `serve_http` runs the server on listeners (`server.serve_proxy`
binds them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
import trio

from apikeyrouter.adapters.sockio import SocketIO
from apikeyrouter.proxy._parse import BODY, BROKEN, DONE, FramingError, Head, HeadError, RequestParser
from apikeyrouter.proxy.http11 import (
    BodyTooLarge,
    ClientGone,
    Handler,
    MalformedBody,
    Request,
    Response,
    ServerLimits,
    protocol_error_body,
)

__all__ = ["serve_http"]

log = structlog.get_logger("apikeyrouter.proxy")

RECEIVE_BYTES = 65536
LINGER_S = 2.0  # after a refusal, how long the rest of the request is read and dropped...
LINGER_BYTES = 4 * 1024 * 1024  # ...and how much of it


class _Phase:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_IDLE, _HEAD, _BUSY = _Phase("idle"), _Phase("head"), _Phase("busy")


class _Connection:
    """One accepted socket. Two tasks: a reader that alone receives from the socket (it feeds the parser, watches
    the deadlines and sees the client leave at once), and the serving loop that parses requests and runs the
    handler for each. Both live in the connection's nursery: cancelling it ends the connection."""

    __slots__ = (
        "_ahead",
        "_body_broken",
        "_body_done",
        "_deadline",
        "_fd",
        "_first",
        "_nursery",
        "_paused",
        "_since",
        "_tightened",
        "_waiter",
        "handling",
        "head_only",
        "http10",
        "io",
        "keep_alive",
        "parser",
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
        self._fd = stream.socket.fileno()
        self.io = SocketIO(self._fd)  # the hot path's reads and writes; the rest through `stream`
        self.parser = RequestParser(server.limits.max_header_bytes)
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
        self._waiter: trio.lowlevel.Task | None = None  # the serving loop, while it waits for data
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
        if not self.peer_closed and (self._body_broken or self.parser.state in (BODY, BROKEN)):
            await self._linger()

    async def _linger(self) -> None:
        """Close after refusing a request whose bytes are still coming (a 413, a malformed head): closing a
        socket with unread data resets the connection, and the client would lose the answer before reading
        it. So: end our side, read and drop what the client still sends, for a bounded time and size."""
        with (
            trio.move_on_after(LINGER_S),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self.stream.send_eof()
            left = LINGER_BYTES
            while left > 0 and (data := await self.stream.receive_some(RECEIVE_BYTES)):
                left -= len(data)

    @property
    def draining(self) -> bool:
        return self.server.draining

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
        drained = False  # the last read took less than it asked for: the socket is empty, wait before reading
        while True:
            if self._ahead >= limit:  # read far enough ahead: wait (a disconnect shows when writing)
                self._paused = trio.Event()
                await self._paused.wait()
            data = await self._receive(drained)
            drained = len(data) < RECEIVE_BYTES
            if not data:
                self._peer_left()
                return
            if self.phase is _IDLE:
                self.phase = _HEAD
                self._since = trio.current_time()
            self.parser.feed(data)
            self._ahead += len(data)
            self._wake()

    def _peer_left(self) -> None:
        self.peer_closed = True
        if self.handling and not self.response.finished and self.request is not None:
            self.request.client_gone = True
            self.close("client disconnected")
            return
        self.parser.feed(b"")  # after the answer: whatever was pipelined is still read, then close
        self._wake()

    async def _receive(self, drained: bool) -> bytes:
        try:
            if drained:  # a read now would find nothing: one syscall and one BlockingIOError fewer per request
                await trio.lowlevel.wait_readable(self._fd)
            return await self.io.receive(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""  # a reset is the peer leaving, like EOF

    async def _need_data(self) -> None:
        """Wait for the reader to bring more (the parser has used up what it had)."""
        self._ahead = 0
        if self._paused is not None:
            self._paused.set()
            self._paused = None
        # Parked by hand rather than on a `trio.Event`: one fewer object and lot per request.
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None  # cancelled while waiting: the reader must not wake it later
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    # -- reading requests -------------------------------------------------------------------------------

    async def _next_request(self) -> Request | None:
        parser = self.parser
        try:
            while True:
                head = parser.head()
                if head is not None:
                    return self._begin(head)
                if parser.closed:
                    return None  # the client ended the connection between requests
                if self.phase is _HEAD and not self._tightened:  # a head in pieces: its deadline applies
                    self._tightened = True
                    self._deadline.deadline = min(self._deadline.deadline, self._due())
                await self._need_data()
        except HeadError as exc:
            await self._refuse(exc.status, str(exc))
            return None

    def _begin(self, head: Head) -> Request:
        self.phase = _BUSY
        self._tightened = False
        self.http10 = head.version == b"1.0"
        self.head_only = head.method == b"HEAD"
        self._first = b""
        self._body_done = self._body_broken = False
        request = self.request = Request(self, head)
        self.keep_alive = not self.http10 and not head.close
        # A body that came with the head (or none at all) is here already: take it without waiting.
        try:
            self._first = self.parser.read()
            self._body_done = self.parser.state is DONE
        except FramingError:
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
            self._body_broken = True  # unread: the connection closes after the answer, which says so
            self.keep_alive = False
            raise BodyTooLarge
        try:
            if self.parser.continue_wanted:
                await self.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_rest(limit)
        except BaseException:
            self._body_broken = True
            self.keep_alive = False  # the answer says `Connection: close`: the client must not reuse it
            raise
        self._body_done = True
        return body

    async def _read_rest(self, limit: int) -> bytes:
        parser = self.parser
        parts = [self._first]
        size = len(self._first)
        while True:
            try:
                data = parser.read()
            except FramingError as exc:
                if self.peer_closed:
                    raise ClientGone from None
                raise MalformedBody(str(exc)) from None
            if data:
                size += len(data)
                if size > limit:
                    raise BodyTooLarge
                parts.append(data)
            if parser.state is DONE:
                return b"".join(parts)
            if self.peer_closed:
                raise ClientGone
            await self._need_data()

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
        parser = self.parser
        if not self.response.finished or self._body_broken or not self.keep_alive or self.server.draining:
            return False
        if parser.state is BODY and not await self._discard_body():
            return False
        if parser.state is not DONE:
            return False
        parser.next_request()  # what came after this request stays for the next
        self.response._reset()
        self.phase = _HEAD if parser.buffered else _IDLE  # some of the next request is here already
        self._since = trio.current_time()
        return True

    async def _discard_body(self) -> bool:
        """Read and drop a body the handler did not read, if it is small and comes quickly."""
        parser = self.parser
        if parser.continue_wanted:
            return False  # the client holds its body back: it must not be sent now
        left = self.server.limits.drain_bytes
        with trio.move_on_after(self.server.limits.header_read_s):
            while True:
                try:
                    left -= len(parser.read())
                except FramingError:
                    return False
                if left < 0:
                    return False
                if parser.state is DONE:
                    return True
                if self.peer_closed:
                    return False
                await self._need_data()
        return False

    async def _refuse(self, status: int, reason: str) -> None:
        """Answer a request whose head is refused, then close."""
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
            await self.io.send_all(data)
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
