"""`H11Transport`: an `httpx.AsyncBaseTransport` on `h11` and trio sockets, with a keep-alive pool per origin.

The adapters keep httpx as their API (`client.post`, `client.stream`); this replaces httpx's default
transport (httpcore) underneath, which spends most of a request's CPU walking its pool. Here:

- one `OriginPool` per (scheme, host, port): a LIFO stack of idle connections behind `max_connections`
  slots; a caller beyond the bound waits for a slot (bounded by the `pool` timeout);
- TLS through `trio.SSLStream` with `ssl.create_default_context()` (verified, SNI = host) unless an
  `ssl_context` is given; a failed handshake or verification is an `httpx.ConnectError`;
- an idle connection the server closed is seen at checkout (its socket is readable) and dropped before a
  byte is sent; a reused connection whose first send fails with nothing written is retried once on a new
  one. Once a byte of the request went out, a failure is raised, never retried (POST is not idempotent);
- the response body is an `httpx.AsyncByteStream` read straight off the connection. Read to its end, the
  connection goes back to the pool; closed before its end, it is closed (unless the rest of the body is
  already in the parser's buffer);
- deadlines: the caller's cancel scope bounds everything; httpx's `timeout` extension (connect, read,
  write, pool) becomes `trio.move_on_after` around each step and raises httpx's timeout exceptions;
- errors are httpx's, as httpcore raises them (ConnectError, ReadError, WriteError, RemoteProtocolError,
  ...), so the adapters classify them unchanged. A cancelled call closes its connection and its slot.

Besides the httpx interface the transport has a small one of its own, `H11Transport.request(...)` returning
a `PooledResponse` (status, headers as a `LowerHeaders` dict, the body read whole or streamed), which the
built-in adapters use through a `PooledClient` (an `httpx.AsyncClient` that carries its pool) to skip
httpx's request and response machinery. It shares the connections, the pool, the retry rule and the error
types above; the request head is written here (names and values checked as h11 would, the framing ours),
h11 tracks the exchange's state and parses the response. One cancel scope bounds the send and the head
(its deadline moved per step) instead of one per socket operation.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import h11
import httpx
import trio

from apikeyrouter.adapters._head import encode_head, request_line
from apikeyrouter.adapters.headers import LowerHeaders
from apikeyrouter.adapters.pool import Origin, OriginPool, PoolStats
from apikeyrouter.adapters.sockio import SocketIO

__all__ = ["H11Transport", "PooledClient", "PooledResponse"]

_READ_SIZE = 65536
_INF = float("inf")
_END = h11.EndOfMessage()
_MAX_ROUTES = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_Timeouts = Mapping[str, float | None]

# An upstream's status line and headers together may take this much (h11's default, 16 KiB, refuses some
# providers' long rate-limit and tracing headers; httpcore allows 100 KiB).
MAX_RESPONSE_HEAD = 128 * 1024


class _NothingSent(Exception):
    """A reused connection failed before any byte of the request was written to it: safe to retry."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


_WRITE: Final = 1
_READ: Final = 2


class _Connection:
    """One HTTP/1.1 connection: a trio stream, its socket and an h11 client state machine.

    Timeouts (httpx's read and write, None: only the caller's cancel scope bounds it) are applied per
    socket operation, each in its own `move_on_after`; or, while `scope` is set, by moving that one
    scope's deadline before each operation (`phase` says which one a timeout interrupted)."""

    __slots__ = (
        "h11", "idle_since", "io", "phase", "poller", "read_s", "scope", "socket", "stream", "tls", "write_s",
    )  # fmt: skip

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType, *, tls: bool) -> None:
        self.stream = stream
        self.socket = socket
        self.tls = tls
        # Plain TCP: reads and writes straight on the socket, a checkpoint only when they must wait (sockio.py).
        self.io = None if tls else SocketIO(socket.fileno())
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.idle_since = 0.0
        self.read_s: float | None = None
        self.write_s: float | None = None
        self.scope: trio.CancelScope | None = None
        self.phase = 0
        # One poller for the connection's life: a checkout costs one poll(2), not three calls and a setup.
        self.poller = select.poll()
        self.poller.register(socket.fileno(), select.POLLIN)

    # -- pool protocol ---------------------------------------------------------------------------------

    def stale(self) -> bool:
        # An idle HTTP/1.1 connection has nothing to say: readable means EOF, a TLS alert, or junk.
        leftover, eof = self.h11.trailing_data
        if leftover or eof:
            return True
        try:
            return bool(self.poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        # Synchronous and without a goodbye (no TLS close_notify): usable while cancelled, never blocks.
        self.socket.close()

    # -- I/O -------------------------------------------------------------------------------------------

    async def send(self, data: bytes, *, first: bool) -> None:
        """Write all of `data`. `first`: the request's first write on a reused connection, where a
        failure with nothing written raises `_NothingSent` (retryable)."""
        scope, write_s = self.scope, self.write_s
        if scope is not None:
            self.phase = _WRITE
            scope.deadline = _INF if write_s is None else trio.current_time() + write_s
        elif write_s is not None:
            with trio.move_on_after(write_s) as own:
                await self._write(data, first)
            if own.cancelled_caught:
                raise httpx.WriteTimeout("timed out writing the request")
            return
        await self._write(data, first)

    async def _write(self, data: bytes, first: bool) -> None:
        io = self.io
        try:
            if io is None:
                await self.stream.send_all(data)
                return
            await io.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error = httpx.WriteError(_describe(exc))
            # A write that failed at once wrote nothing: a request's first one on a connection the server
            # closed while it was idle is safe to send again (`send_all` raises past its first write only
            # after that one fitted whole or in part, and then the request is not retried).
            if first and io is not None and io.sent == 0:
                raise _NothingSent(error) from exc
            raise error from exc

    async def next_event(self) -> Any:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self._receive())  # type: ignore[arg-type]  # h11 takes any bytes-like

    async def _receive(self) -> bytes | bytearray:
        scope, read_s = self.scope, self.read_s
        receive = self.stream.receive_some if self.io is None else self.io.receive
        try:
            if scope is not None:
                self.phase = _READ
                scope.deadline = _INF if read_s is None else trio.current_time() + read_s
                return await receive(_READ_SIZE)
            if read_s is None:
                return await receive(_READ_SIZE)
            with trio.move_on_after(read_s):
                return await receive(_READ_SIZE)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_describe(exc)) from exc
        raise httpx.ReadTimeout("timed out reading the response")

    def timed_out(self) -> httpx.TimeoutException:
        """The timeout that ended the shared `scope`, by the step it interrupted."""
        if self.phase == _WRITE:
            return httpx.WriteTimeout("timed out writing the request")
        return httpx.ReadTimeout("timed out reading the response")

    def finish_buffered(self) -> bool:
        """Read what is left of the response from the parser's buffer only (no I/O): True when the
        response ended there and the connection is ready for the next request."""
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if type(event) is h11.EndOfMessage:
                return self.next_cycle()
            if type(event) is not h11.Data:
                return False  # NEED_DATA, PAUSED, ConnectionClosed

    def next_cycle(self) -> bool:
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False  # `Connection: close`, a body read to EOF, or our request never finished


class _Body(httpx.AsyncByteStream):
    """A response body read off its connection; owns the connection and the pool slot until it ends."""

    def __init__(self, pool: OriginPool[_Connection], conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            while True:
                event = await conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    return bytes(event.data)
                if kind is h11.EndOfMessage:
                    break
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        except BaseException:
            self._release(reuse=False)
            raise
        self._release(reuse=conn.next_cycle())
        raise StopAsyncIteration

    async def read(self, limit: int) -> bytes:
        """What `__anext__` would give, joined, up to `limit` bytes; one cancel scope for all the reads."""
        conn = self._conn
        if conn is None:
            return b""
        parts: list[bytes] = []
        size = 0
        try:
            with trio.CancelScope() as scope:
                conn.scope = scope
                while size < limit:
                    event = await conn.next_event()
                    kind = type(event)
                    if kind is h11.Data:
                        parts.append(event.data)
                        size += len(event.data)
                    elif kind is h11.EndOfMessage:
                        conn.scope = None
                        self._release(reuse=conn.next_cycle())
                        break
                    else:
                        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            conn.scope = None
            if scope.cancelled_caught:
                raise conn.timed_out()
        except BaseException:
            conn.scope = None
            self._release(reuse=False)
            raise
        body = b"".join(parts)
        return body if size <= limit else body[:limit]

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            self._release(reuse=conn.finish_buffered())

    def _release(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if reuse:
            self._pool.checkin(conn)
        else:
            conn.close()
        self._pool.release()


class H11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 on h11 and trio; `limits` as httpx's (max_connections per origin, keep-alive count and
    expiry), `ssl_context` to trust something other than the system's CAs."""

    def __init__(self, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30.0)
        self._max_connections = limits.max_connections or 100
        keepalive = limits.max_keepalive_connections
        self._max_idle = self._max_connections if keepalive is None else keepalive
        self._expiry = limits.keepalive_expiry
        self._ssl_context = ssl_context
        self._pools: dict[Origin, OriginPool[_Connection]] = {}
        # (method, URL) -> its pool, request line + host line, and the event h11 tracks it with.
        self._routes: dict[tuple[str, str], tuple[OriginPool[_Connection], bytes, h11.Request]] = {}
        self._closed = False

    def stats(self) -> dict[Origin, PoolStats]:
        return {origin: pool.stats() for origin, pool in self._pools.items()}

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts: _Timeouts = request.extensions.get("timeout", {})
        pool = self._pool(request.url)
        await _acquire(pool, timeouts.get("pool"))
        try:
            conn, head = await self._exchange(pool, request, timeouts)
        except BaseException:
            pool.release()
            raise
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=_Body(pool, conn),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(head.reason)},
        )

    def _pool(self, url: httpx.URL) -> OriginPool[_Connection]:
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = Origin(scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme])
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = OriginPool(
                origin, max_connections=self._max_connections, max_idle=self._max_idle, keepalive_expiry=self._expiry
            )
        return pool

    # -- the direct interface ----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        steps: httpx.Timeout,
        *,
        content_type: str = "application/json",
    ) -> PooledResponse:
        """Send one request and return its response once the head is in (the body still on the wire).
        `steps` (httpx's step timeouts: the client's `timeout`) bound the wait for a slot, the connect, each
        write and each read; the caller's cancel scope bounds the whole. Raises httpx's exceptions, as
        `handle_async_request` does; the response must be read to its end or closed (`aclose`), which
        gives the slot back."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        route = self._routes.get((method, url)) or self._route(method, url)
        pool, line, event = route
        data = line + encode_head(headers, body, content_type)
        if body:
            data += body
        await _acquire(pool, steps.pool)
        try:
            conn, head = await self._exchange_direct(pool, event, data, steps)
        except BaseException:
            pool.release()
            raise
        return PooledResponse(pool, conn, head)

    def _route(self, method: str, url: str) -> tuple[OriginPool[_Connection], bytes, h11.Request]:
        parsed = httpx.URL(url)
        pool = self._pool(parsed)
        line, event = request_line(method, parsed.raw_path, parsed.netloc)
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        route = self._routes[(method, url)] = (pool, line, event)
        return route

    async def _exchange_direct(
        self, pool: OriginPool[_Connection], event: h11.Request, data: bytes, steps: httpx.Timeout
    ) -> tuple[_Connection, h11.Response]:
        for attempt in (0, 1):
            conn = pool.checkout()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool.origin, steps.connect)
                pool.note_opened()
            conn.read_s, conn.write_s = steps.read, steps.write
            try:
                # h11 follows the exchange (a body-less request event of the same method); the bytes are ours.
                conn.h11.send(event)
                conn.h11.send(_END)
                with trio.CancelScope() as scope:
                    conn.scope = scope
                    await conn.send(data, first=reused)
                    head = await self._read_head(conn)
                conn.scope = None
                if scope.cancelled_caught:
                    raise conn.timed_out()
                return conn, head
            except _NothingSent as exc:
                conn.close()
                if attempt == 0:
                    continue
                raise exc.error from exc.__cause__
            except h11.LocalProtocolError as exc:
                conn.close()
                raise httpx.LocalProtocolError(str(exc)) from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, pool: OriginPool[_Connection], request: httpx.Request, timeouts: _Timeouts
    ) -> tuple[_Connection, h11.Response]:
        """Send the request and read the response head, on a pooled connection or a new one."""
        for attempt in (0, 1):
            conn = pool.checkout()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool.origin, timeouts.get("connect"))
                pool.note_opened()
            conn.read_s, conn.write_s = timeouts.get("read"), timeouts.get("write")
            try:
                await self._send_request(conn, request, first=reused)
                return conn, await self._read_head(conn)
            except _NothingSent as exc:
                conn.close()
                if attempt == 0:
                    continue
                raise exc.error from exc.__cause__
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_request(self, conn: _Connection, request: httpx.Request, *, first: bool) -> None:
        url = request.url
        target = url.raw_path
        try:
            head = conn.h11.send(h11.Request(method=request.method, target=target, headers=request.headers.raw))
            try:
                body: bytes | None = request.content
            except httpx.RequestNotRead:
                body = None
            if body is not None:
                data = head + (conn.h11.send(h11.Data(data=body)) if body else b"")
                await conn.send(data + conn.h11.send(h11.EndOfMessage()), first=first)
                return
            await conn.send(head, first=first)
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    await conn.send(conn.h11.send(h11.Data(data=chunk)), first=False)
            await conn.send(conn.h11.send(h11.EndOfMessage()), first=False)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc

    async def _read_head(self, conn: _Connection) -> h11.Response:
        while True:
            event = await conn.next_event()
            kind = type(event)
            if kind is h11.Response:
                return event  # type: ignore[no-any-return]
            if kind is h11.InformationalResponse:
                continue  # 100 Continue and friends: the real answer follows
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async def _connect(self, origin: Origin, connect_s: float | None) -> _Connection:
        stream: trio.SocketStream | None = None
        try:
            with trio.move_on_after(_seconds(connect_s)):
                stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme != "https":
                    return _Connection(stream, stream.socket, tls=False)
                tls = trio.SSLStream(stream, self._tls_context(), server_hostname=origin.host, https_compatible=True)
                await tls.do_handshake()
                return _Connection(tls, stream.socket, tls=True)
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            if stream is not None:
                stream.socket.close()
            raise httpx.ConnectError(_describe(exc)) from exc
        except BaseException:
            if stream is not None:
                stream.socket.close()
            raise
        if stream is not None:
            stream.socket.close()
        raise httpx.ConnectTimeout(f"timed out connecting to {origin.host}:{origin.port}")

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context


class PooledResponse:
    """A response on the direct path: `status_code`, `headers` (a `LowerHeaders` dict), `raw_headers` (as
    they came, names in their case), and the body, read whole (`read`) or streamed (`aiter_bytes`). Read
    to its end, the connection goes back to the pool; `aclose()` before that closes it (unless the rest
    is already buffered). Either way the pool slot is given back exactly once."""

    __slots__ = ("_body", "headers", "raw_headers", "reason_phrase", "status_code")

    def __init__(self, pool: OriginPool[_Connection], conn: _Connection, head: h11.Response) -> None:
        self.status_code: int = head.status_code
        self.reason_phrase = head.reason.decode("latin-1")
        self.raw_headers: list[tuple[bytes, bytes]] = head.headers.raw_items()
        self.headers = LowerHeaders.from_raw(self.raw_headers)
        self._body = _Body(pool, conn)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._body

    async def read(self, limit: int) -> bytes:
        """The body, or its first `limit` bytes when it is longer (then the connection is closed), under
        one cancel scope for all its reads."""
        return await self._body.read(limit)

    async def aclose(self) -> None:
        await self._body.aclose()


class PooledClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` on an `H11Transport` that also carries it as `pool`: what the built-in
    adapters' `make_client` returns, and how they recognise a client whose pool they may drive directly
    (`pool.request`) instead of through httpx. As an httpx client it works like any other."""

    def __init__(self, pool: H11Transport, *, timeout: httpx.Timeout) -> None:
        # trust_env=False: no proxy or netrc picked up from the environment behind the operator's back.
        super().__init__(transport=pool, timeout=timeout, trust_env=False, follow_redirects=False)
        self.pool = pool


async def _acquire(pool: OriginPool[_Connection], pool_s: float | None) -> None:
    """A slot on `pool`: at once when one is free, else waiting at most `pool_s` (PoolTimeout)."""
    if pool.try_acquire():
        return
    with trio.move_on_after(_seconds(pool_s)) as waited:
        await pool.acquire()
    if waited.cancelled_caught:
        raise httpx.PoolTimeout("timed out waiting for a connection")


def _seconds(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
