"""A real HTTP/1.1 upstream on 127.0.0.1 for transport tests: trio sockets + h11, scripted per request.

`async with upstream(handler) as up:` serves until the block ends. `handler(exchange)` answers one
request: `await exchange.respond(...)`, or sends h11 events itself, or `exchange.abort()`s the connection.
The upstream counts what a client cannot hide: connections accepted, requests seen (per connection), and
connections the client closed (EOF seen while waiting for the next request).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import h11
import trio


@attrs.define(eq=False)
class Exchange:
    conn_id: int
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    _stream: trio.abc.Stream
    _h11: h11.Connection
    _up: Upstream
    aborted: bool = False

    async def send(self, *events: h11.Event) -> None:
        await self._stream.send_all(b"".join(self._h11.send(e) or b"" for e in events))

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are, outside h11's framing (a malformed or hand-split response)."""
        await self._stream.send_all(data)

    async def send_dripped(self, *events: h11.Event, step: int = 3) -> None:
        """`send`, but `step` bytes at a time with a pause between: the client sees every split."""
        data = b"".join(self._h11.send(e) or b"" for e in events)
        for i in range(0, len(data), step):
            await self._stream.send_all(data[i : i + step])
            await trio.sleep(0.001)

    async def respond(self, body: bytes = b"ok", *, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> None:
        head = [("content-length", str(len(body))), *headers]
        await self.send(h11.Response(status_code=status, headers=head), h11.Data(data=body), h11.EndOfMessage())

    async def respond_chunked(self, chunks: Sequence[bytes], *, headers: Sequence[tuple[str, str]] = ()) -> None:
        await self.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked"), *headers]))
        for chunk in chunks:
            await self.send(h11.Data(data=chunk))
        await self.send(h11.EndOfMessage())

    async def until_client_hangs_up(self) -> None:
        """Answer nothing; return (ending the connection) once the client has closed its end."""
        try:
            while await self._stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        raise trio.BrokenResourceError("the client hung up")

    def abort(self) -> None:
        """Close the connection at once, wherever the exchange stands."""
        self.aborted = True
        self._up._notify()
        raw = self._stream.transport_stream if isinstance(self._stream, trio.SSLStream) else self._stream
        assert isinstance(raw, trio.SocketStream)
        raw.socket.close()


Handler = Callable[[Exchange], Awaitable[None]]


@attrs.define(eq=False)
class Upstream:
    port: int = 0
    accepted: int = 0
    requests: list[Exchange] = attrs.Factory(list)
    client_closed: list[int] = attrs.Factory(list)  # ids of connections the client closed
    changed: trio.Event = attrs.Factory(trio.Event)
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def conn_ids(self) -> list[int]:
        return [r.conn_id for r in self.requests]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def _serve_one(up: Upstream, raw: trio.SocketStream, handler: Handler, tls: ssl.SSLContext | None) -> None:
    up.accepted += 1
    conn_id = up.accepted
    up._notify()
    stream: trio.abc.Stream = trio.SSLStream(raw, tls, server_side=True) if tls is not None else raw
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    up.client_closed.append(conn_id)
                    up._notify()
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                up.client_closed.append(conn_id)
                up._notify()
                return
            assert isinstance(event, h11.Request), event
            body = b""
            while True:
                part = conn.next_event()
                if part is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(part, h11.Data):
                    body += part.data
                else:
                    assert isinstance(part, h11.EndOfMessage), part
                    break
            ex = Exchange(
                conn_id, event.method.decode(), event.target.decode(), list(event.headers), body, stream, conn, up
            )
            up.requests.append(ex)
            up._notify()
            await handler(ex)
            if ex.aborted:
                return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                await stream.aclose()
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        up.client_closed.append(conn_id)
        up._notify()
    finally:
        raw.socket.close()


async def ok(ex: Exchange) -> None:
    await ex.respond(f"conn {ex.conn_id} {ex.method} {ex.target}".encode())


@asynccontextmanager
async def upstream(handler: Handler = ok, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    up = Upstream(tls=tls is not None)

    async def on_connection(raw: trio.SocketStream) -> None:
        await _serve_one(up, raw, handler, tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
        up.port = listeners[0].socket.getsockname()[1]
        try:
            yield up
        finally:
            nursery.cancel_scope.cancel()
