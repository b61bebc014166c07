"""A keep-alive pool for one origin: a LIFO stack of idle connections behind a bounded number of slots.

A caller takes a slot (`await pool.acquire()`, later `release()`; it waits while `max_connections`
calls are in flight), then `checkout()` pops the most recently used idle connection (LIFO: the warmest
one, and the ones at the bottom age out together), discarding those that expired or that the server
closed while they sat idle; `checkin()` pushes a finished connection back. Both are O(1) (amortised: a
discarded connection is popped once). A new connection is only opened when the stack is empty, so idle
plus busy connections never exceed the slots.

The pool knows nothing of HTTP: a connection is anything with `idle_since`, `stale()` and `close()`.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import attrs
import trio

__all__ = ["Origin", "OriginPool", "PoolStats", "Pooled"]


@attrs.frozen
class Origin:
    scheme: str  # "http" or "https"
    host: str
    port: int


class Pooled(Protocol):
    idle_since: float

    def stale(self) -> bool:
        """True when the connection cannot carry a new request (the server closed it, or sent bytes
        nobody asked for); checked without sending anything."""
        ...

    def close(self) -> None:
        """Close at once, without waiting on the peer."""
        ...


C = TypeVar("C", bound=Pooled)


@attrs.frozen
class PoolStats:
    idle: int
    in_flight: int
    opened: int  # connections opened over the pool's life
    discarded: int  # idle connections dropped at checkout: expired, or closed by the server


class OriginPool(Generic[C]):
    def __init__(self, origin: Origin, *, max_connections: int, max_idle: int, keepalive_expiry: float | None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.origin = origin
        self.max_connections = max_connections
        self._max_idle = max(0, min(max_idle, max_connections))
        self._expiry = keepalive_expiry
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[C] = []
        self._closed = False
        self.opened = 0
        self.discarded = 0

    async def acquire(self) -> None:
        """One call in flight on this origin until `release()`; waits (FIFO: trio's semaphore is fair)
        while all slots are taken. The caller bounds the wait with its own cancel scope."""
        await self._slots.acquire()

    def try_acquire(self) -> bool:
        """`acquire()` when a slot is free and nobody waits for one (no checkpoint); False otherwise."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def release(self) -> None:
        self._slots.release()

    def checkout(self) -> C | None:
        """The most recently used idle connection that can still carry a request, or None (open one)."""
        idle = self._idle
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if self._expiry is not None and now - conn.idle_since >= self._expiry:
                # Everything below it went idle earlier: expired too.
                self._drop(conn)
                while idle:
                    self._drop(idle.pop())
                return None
            if conn.stale():
                self._drop(conn)
                continue
            return conn
        return None

    def checkin(self, conn: C) -> None:
        """A connection whose exchange ended cleanly and that may carry another request."""
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = trio.current_time()
        self._idle.append(conn)

    def note_opened(self) -> None:
        self.opened += 1

    def stats(self) -> PoolStats:
        in_flight = self.max_connections - self._slots.value
        return PoolStats(idle=len(self._idle), in_flight=in_flight, opened=self.opened, discarded=self.discarded)

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _drop(self, conn: C) -> None:
        self.discarded += 1
        conn.close()
