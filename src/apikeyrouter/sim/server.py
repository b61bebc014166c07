"""The simulator's HTTP/1.1 server: h11 on trio sockets.

Why not the proxy's server (`proxy/http11.py`): fault injection needs what a well-behaved server never
does: dropping a connection without an answer (`reset_rate`), ending a chunked body abruptly
(`cut_stream_after`), and seeing the client hang up while we hang (`timeout_rate`). A lean h11 loop is
also fast (~2.8x the same provider behind hypercorn, when that was measured), which matters because the
sim must never be the bottleneck of our benchmarks.

While a response is pending (latency, a hang, a stream), a watcher task reads the socket: EOF means
the client went away, the response is cancelled and the disconnect is recorded against the key. That
is the hook the router's cancellation tests assert on.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import h11
import structlog
import trio

from apikeyrouter.sim.config import SimConfig
from apikeyrouter.sim.provider import Fault, Reply, SimProvider

__all__ = ["SimServer", "serve_sim"]

log = structlog.get_logger("apikeyrouter.sim")

_MAX_BODY = 8 * 1024 * 1024
_READ = 65536


class _ClientGone(Exception):
    pass


class SimServer:
    """Owns a `SimProvider` and serves it; `provider` exposes the stats tests assert on."""

    def __init__(self, config: SimConfig | None = None, provider: SimProvider | None = None) -> None:
        self.provider = provider or SimProvider(config)
        self.connections = 0
        self.port: int | None = None

    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # The tokenizer (for usage counts) loads in ~0.3 s; do it off the event loop before accepting.
        from apikeyrouter.sim.wire import words

        await trio.to_thread.run_sync(words)
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("sim.listening", host=host, port=self.port)
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            while await self._one_exchange(stream, conn):
                conn.start_next_cycle()
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except Exception:  # a bug in the sim must not take the whole server down
            log.exception("sim.connection_failed")
        finally:
            await _close_quietly(stream)

    async def _read_event(self, stream: trio.SocketStream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_READ)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    # EOF between requests is a normal keep-alive close; h11 reports it as ConnectionClosed.
                    continue
                continue
            return event

    async def _one_exchange(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        event = await self._read_event(stream, conn)
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            return False
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        parts: list[bytes] = []
        size = 0
        while True:
            ev = await self._read_event(stream, conn)
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > _MAX_BODY:
                    return False
                parts.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise _ClientGone
        reply = self.provider.handle(
            event.method.decode("ascii"), event.target.decode("latin-1"), headers, b"".join(parts)
        )
        if reply.fault is Fault.RESET:
            self.provider.record_fault(reply, "reset")
            _abort(stream)
            return False
        if reply.fault is Fault.NONE and reply.events is None and reply.latency <= 0:
            # The fast path: nothing to wait for, so nothing to watch.
            await stream.send_all(_render(conn, reply))
            self.provider.record_completed(reply)
            return conn.our_state is h11.DONE and conn.their_state is h11.DONE
        return await self._watched(stream, conn, reply)

    async def _watched(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> bool:
        gone = False

        async def watch(work: trio.CancelScope) -> None:
            nonlocal gone
            while True:
                try:
                    data = await stream.receive_some(_READ)
                except trio.ClosedResourceError:
                    return  # we closed it ourselves (a cut stream)
                except trio.BrokenResourceError:
                    data = b""  # reset by the peer: gone just the same
                if not data:
                    gone = True
                    work.cancel()
                    return
                conn.receive_data(data)  # a pipelined next request: h11 buffers it for the next cycle

        keep_open = True
        async with trio.open_nursery() as nursery:
            work = trio.CancelScope()
            nursery.start_soon(watch, work)
            with work:
                try:
                    keep_open = await self._carry_out(stream, conn, reply)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
            nursery.cancel_scope.cancel()
        if gone:
            self.provider.record_disconnect(reply)
            raise _ClientGone
        return keep_open

    async def _carry_out(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> bool:
        if reply.latency > 0:
            await trio.sleep(reply.latency)
        if reply.fault is Fault.HANG:
            await trio.sleep_forever()
        if reply.events is None:
            await stream.send_all(_render(conn, reply))
            self.provider.record_completed(reply)
            return conn.our_state is h11.DONE and conn.their_state is h11.DONE
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=list(reply.headers))) or b"")
        for i, event in enumerate(reply.events):
            if reply.cut_after and i >= reply.cut_after:
                self.provider.record_fault(reply, "cut")
                _abort(stream)
                return False
            if i and reply.chunk_delay > 0:
                await trio.sleep(reply.chunk_delay)
            await stream.send_all(conn.send(h11.Data(data=event)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        self.provider.record_completed(reply)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _render(conn: h11.Connection, reply: Reply) -> bytes:
    headers = [*reply.headers, (b"content-length", b"%d" % len(reply.body))]
    out = conn.send(h11.Response(status_code=reply.status, headers=headers)) or b""
    if reply.body:
        out += conn.send(h11.Data(data=reply.body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


def _abort(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0), the way a crashed upstream or a load balancer drops us."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def _close_quietly(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.aclose()


async def serve_sim(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    server: SimServer | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator until cancelled; `task_status.started(port)` reports the bound port (port=0 ok).

    Pass your own `server` to keep a handle on its stats: `server = SimServer(cfg)`,
    `port = await nursery.start(serve_sim, None, "127.0.0.1", 0, server=server)` (or `server.serve`).
    """
    srv = server or SimServer(config)
    await srv.serve(host, port, task_status=task_status)
