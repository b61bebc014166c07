"""`H11Transport`: an `httpx.AsyncBaseTransport` on trio sockets, with a keep-alive pool per origin.

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
  write, pool) becomes `trio.move_on_after` around each wait and raises httpx's timeout exceptions;
- errors are httpx's, as httpcore raises them (ConnectError, ReadError, WriteError, RemoteProtocolError,
  ...), so the adapters classify them unchanged. A cancelled call closes its connection and its slot.

Besides the httpx interface the transport has a small one of its own, `H11Transport.request(...)` returning
a `PooledResponse` (status, headers as a `LowerHeaders` dict, the body read whole or streamed), which the
built-in adapters use through a `PooledClient` (an `httpx.AsyncClient` that carries its pool) to skip
httpx's request and response machinery. It shares the connections, the pool, the retry rule and the error
types above; the request head is written here (names and values checked as h11 would, the framing ours;
the part that depends on the headers only is kept per request line and header set).

Both interfaces read responses with `_wire.ResponseReader` (h11's grammar, stricter in a few places; h11
still checks the httpx interface's request heads). A read or write that completes at once (plain TCP)
enters no cancel scope; a wait gets one `move_on_after` for its step timeout, and none when the caller's
deadline comes first, so a kept-alive exchange costs at most one cancel scope (trio's cost ~10 µs each).
"""

from __future__ import annotations

import select
import ssl
from collections.abc import AsyncIterator, Mapping

import h11
import httpx
import trio

from apikeyrouter.adapters._head import encode_fields, encode_lines, request_line
from apikeyrouter.adapters._wire import Head, ResponseReader
from apikeyrouter.adapters.headers import LowerHeaders
from apikeyrouter.adapters.pool import Origin, OriginPool, PoolStats
from apikeyrouter.adapters.sockio import SocketIO

__all__ = ["H11Transport", "PooledClient", "PooledResponse"]

_READ_SIZE = 65536
_INF = float("inf")
_MAX_ROUTES = 1024
_MAX_HEADS = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}
_Timeouts = Mapping[str, float | None]


class _NothingSent(Exception):
    """A reused connection failed before any byte of the request was written to it: safe to retry."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _Connection:
    """One HTTP/1.1 connection: a trio stream, its socket and the reader of its responses (`_wire.py`).

    Timeouts (httpx's read and write, None: only the caller's cancel scope bounds it) bound a wait on the
    socket, each in its own `move_on_after`; on plain TCP a read or write that completes at once waits
    for nothing and needs none, so a kept-alive exchange enters one cancel scope: the wait for the head."""

    __slots__ = ("drained", "idle_since", "io", "poller", "read_s", "reader", "socket", "stream", "tls", "write_s")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType, *, tls: bool) -> None:
        self.stream = stream
        self.socket = socket
        self.tls = tls
        # Plain TCP: reads and writes straight on the socket, a checkpoint only when they must wait (sockio.py).
        self.io = None if tls else SocketIO(socket.fileno())
        self.reader = ResponseReader()
        # The last read took less than it asked for, or a request just went out: a read now would find
        # nothing (one syscall and one BlockingIOError per wait), so the next `fill` waits first.
        self.drained = True
        self.idle_since = 0.0
        self.read_s: float | None = None
        self.write_s: float | None = None
        # One poller for the connection's life: a checkout costs one poll(2), not three calls and a setup.
        self.poller = select.poll()
        self.poller.register(socket.fileno(), select.POLLIN)

    # -- pool protocol ---------------------------------------------------------------------------------

    def stale(self) -> bool:
        # An idle HTTP/1.1 connection has nothing to say: readable means EOF, a TLS alert, or junk.
        if self.reader.buffered or self.reader.eof:
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
        io = self.io
        if io is None:
            await self._send_tls(data)
            return
        try:
            if io.send_nowait(data) == len(data):
                return
            if _caller_bounds(self.write_s):
                await io.send_rest(data)
                return
            with trio.move_on_after(self.write_s) as own:  # type: ignore[arg-type]  # not None here
                await io.send_rest(data)
        except OSError as exc:
            error = httpx.WriteError(_describe(exc))
            # A write that failed at once wrote nothing: a request's first one on a connection the server
            # closed while it was idle is safe to send again (past its first write, the request is not).
            if first and io.sent == 0:
                raise _NothingSent(error) from exc
            raise error from exc
        if own.cancelled_caught:
            raise httpx.WriteTimeout("timed out writing the request")

    async def _send_tls(self, data: bytes) -> None:
        try:
            with trio.move_on_after(_seconds(self.write_s)) as own:
                await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.WriteError(_describe(exc)) from exc
        if own.cancelled_caught:
            raise httpx.WriteTimeout("timed out writing the request")

    async def fill(self) -> None:
        """Feed the reader what the socket has: at once if it has bytes, else after waiting (read timeout).
        After a short read (the socket's buffer emptied) or a request sent, it waits first: a paced stream's
        next event, or an answer, is never there yet, and the read that would find nothing costs a syscall
        and an exception per event."""
        io = self.io
        if io is not None and not self.drained:
            try:
                data = io.receive_nowait(_READ_SIZE)
            except OSError as exc:
                raise httpx.ReadError(_describe(exc)) from exc
            if data is not None:
                self.drained = len(data) < _READ_SIZE
                self.reader.feed(data)
                return
        data = await self._receive_waiting()
        self.drained = len(data) < _READ_SIZE
        self.reader.feed(data)

    async def _receive_waiting(self) -> bytes:
        read_s = self.read_s
        try:
            if _caller_bounds(read_s):
                return await self._wait_receive()
            with trio.move_on_after(read_s):  # type: ignore[arg-type]  # not None here
                return await self._wait_receive()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_describe(exc)) from exc
        raise httpx.ReadTimeout("timed out reading the response")

    async def _wait_receive(self) -> bytes:
        if self.io is not None:
            return await self.io.receive_waiting(_READ_SIZE)
        return bytes(await self.stream.receive_some(_READ_SIZE))

    async def read_head(self, *, head_request: bool) -> Head:
        """The response's head (after any 1xx), once the request is out."""
        reader = self.reader
        reader.start(head_request=head_request)
        head = reader.next_head()
        while head is None:  # the first `fill` waits: `drained` is set when the request goes out
            await self.fill()
            head = reader.next_head()
        return head


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
        reader = conn.reader
        try:
            piece = reader.next_body()
            while piece is None:
                await conn.fill()
                piece = reader.next_body()
        except BaseException:
            self._release(reuse=False)
            raise
        if piece:
            return piece
        self._release(reuse=reader.reusable())
        raise StopAsyncIteration

    async def read(self, limit: int) -> bytes:
        """What `__anext__` would give, joined, up to `limit` bytes."""
        conn = self._conn
        if conn is None:
            return b""
        reader = conn.reader
        parts: list[bytes] = []
        size = 0
        try:
            while size < limit:
                piece = reader.next_body()
                if piece is None:
                    await conn.fill()
                elif piece:
                    parts.append(piece)
                    size += len(piece)
                else:
                    self._release(reuse=reader.reusable())
                    break
        except BaseException:
            self._release(reuse=False)
            raise
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if size <= limit else body[:limit]

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            self._release(reuse=conn.reader.finish_buffered())

    def _release(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if reuse:
            self._pool.checkin(conn)
        else:
            conn.close()
        self._pool.release()


class _Route:
    """A (method, URL) the direct interface has sent to: its pool and its request line (with `host`)."""

    __slots__ = ("head_request", "line", "pool")

    def __init__(self, pool: OriginPool[_Connection], line: bytes, *, head_request: bool) -> None:
        self.pool = pool
        self.line = line
        self.head_request = head_request


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
        self._routes: dict[tuple[str, str], _Route] = {}
        # (request line, headers, has a body, content type) -> the request's head up to its framing: a
        # caller sends the same few header sets again and again (one per endpoint). Lines that carry the
        # caller's `secret` are never part of it: they are encoded per request, so no key outlives its use.
        self._heads: dict[tuple[bytes, tuple[tuple[str, str], ...], bool, str], bytes] = {}
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
            steps = (timeouts.get("connect"), timeouts.get("read"), timeouts.get("write"))
            conn, head = await self._exchange(pool, request, request.method == "HEAD", steps)
        except BaseException:
            pool.release()
            raise
        return httpx.Response(
            head.status,
            headers=_raw(head),
            stream=_Body(pool, conn),
            extensions={"http_version": f"HTTP/{head.version}".encode(), "reason_phrase": head.reason.encode("latin1")},
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
        secret: str | None = None,
    ) -> PooledResponse:
        """Send one request and return its response once the head is in (the body still on the wire).
        `secret`: the key material some header values carry; those lines are not cached (see `_heads`).
        `steps` (httpx's step timeouts: the client's `timeout`) bound the wait for a slot, the connect, each
        write and each read; the caller's cancel scope bounds the whole. Raises httpx's exceptions, as
        `handle_async_request` does; the response must be read to its end or closed (`aclose`), which
        gives the slot back."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        route = self._routes.get((method, url)) or self._route(method, url)
        line = route.line
        items = tuple(headers.items())
        private = b""
        if secret:
            public = tuple(item for item in items if secret not in item[1])
            if len(public) != len(items):
                private = encode_lines(item for item in items if secret in item[1])
                items = public
        key = (line, items, body is not None, content_type)
        data = self._heads.get(key)
        if data is None:
            data = self._head(key, dict(items) if private else headers)
        if private:
            data += private
        data = data + b"\r\n" if body is None else b"%scontent-length: %d\r\n\r\n%s" % (data, len(body), body)
        pool = route.pool
        await _acquire(pool, steps.pool)
        try:
            conn, head = await self._exchange(pool, data, route.head_request, (steps.connect, steps.read, steps.write))
        except BaseException:
            pool.release()
            raise
        return PooledResponse(pool, conn, head)

    def _head(self, key: tuple[bytes, tuple[tuple[str, str], ...], bool, str], headers: Mapping[str, str]) -> bytes:
        line, _, has_body, content_type = key
        head = line + encode_fields(headers, has_body, content_type)
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        self._heads[key] = head
        return head

    def _route(self, method: str, url: str) -> _Route:
        parsed = httpx.URL(url)
        pool = self._pool(parsed)
        line = request_line(method, parsed.raw_path, parsed.netloc)
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        route = self._routes[(method, url)] = _Route(pool, line, head_request=method == "HEAD")
        return route

    async def _exchange(
        self,
        pool: OriginPool[_Connection],
        payload: bytes | httpx.Request,
        head_request: bool,
        steps: tuple[float | None, float | None, float | None],
    ) -> tuple[_Connection, Head]:
        """Send the request (the direct path's bytes, or httpx's request) and read the response head, on a
        pooled connection or a new one; `steps` are the (connect, read, write) timeouts. A kept connection
        the server had closed is tried once more on a new one, only if no byte of the request was sent."""
        connect_s, read_s, write_s = steps
        for attempt in (0, 1):
            conn = pool.checkout()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool.origin, connect_s)
                pool.note_opened()
            conn.read_s, conn.write_s = read_s, write_s
            conn.drained = True  # idle (checked by `stale`) and about to be asked: nothing to read yet
            try:
                if type(payload) is bytes:
                    await conn.send(payload, first=reused)
                else:
                    assert isinstance(payload, httpx.Request)
                    await _send_request(conn, payload, first=reused)
                return conn, await conn.read_head(head_request=head_request)
            except _NothingSent as exc:
                conn.close()
                if attempt == 0:
                    continue
                raise exc.error from exc.__cause__
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

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

    __slots__ = ("_body", "_head", "headers", "reason_phrase", "status_code")

    def __init__(self, pool: OriginPool[_Connection], conn: _Connection, head: Head) -> None:
        self.status_code: int = head.status
        self.reason_phrase = head.reason
        self.headers: LowerHeaders = head.headers
        self._head = head
        self._body = _Body(pool, conn)

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return _raw(self._head)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._body

    async def read(self, limit: int) -> bytes:
        """The body, or its first `limit` bytes when it is longer (then the connection is closed on
        `aclose`)."""
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


async def _send_request(conn: _Connection, request: httpx.Request, *, first: bool) -> None:
    """The httpx interface's request: its head checked by h11 (names, values, a host), written as is;
    the body as httpx framed it (`content-length`, or `transfer-encoding: chunked` for a stream)."""
    try:
        event = h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    fields = event.headers.raw_items()
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (event.method, event.target, b"".join(b"%s: %s\r\n" % f for f in fields))
    chunked = any(name == b"transfer-encoding" for name, _ in event.headers)
    try:
        body: bytes | None = request.content
    except httpx.RequestNotRead:
        body = None
    if body is not None and not chunked:
        await conn.send(head + body, first=first)
        return
    await conn.send(head, first=first)
    async for chunk in request.stream:  # type: ignore[union-attr]
        if chunk:
            await conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk, first=False)
    if chunked:
        await conn.send(b"0\r\n\r\n", first=False)


def _raw(head: Head) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in head.items]


def _caller_bounds(step_s: float | None) -> bool:
    """True when a wait needs no timeout scope of its own: it has no step timeout, or the caller's
    deadline comes before the step's would (then the caller's scope ends the wait first anyway, and a
    trio cancel scope, ~10 µs to enter and leave, is saved). Checked at every wait, so a caller that moves
    its deadline between steps is seen."""
    return step_s is None or trio.current_effective_deadline() < trio.current_time() + step_s


def _seconds(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
