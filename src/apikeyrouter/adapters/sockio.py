"""Receive and send on a connected TCP socket without trio's two scheduler passes per call: the proxy's
accepted connections (proxy/_conn.py) and the upstream client's plain-TCP connections (transport.py).

trio's socket methods make every call look as if it blocked: a successful `recv` or `send` is wrapped in
`checkpoint_if_cancelled` and `cancel_shielded_checkpoint`, so the task goes through the run queue (its
whole coroutine stack resumed) even when the kernel had the bytes or the room at once. A proxied request
makes two such calls on the client side (its request in, its answer out) and one more per streamed chunk,
and as many on the upstream side; that was a tenth of the server's cost per request. Here a call tries
the socket first and waits with `trio.lowlevel.wait_readable` / `wait_writable` only when it would block,
so it is a checkpoint only then.

What that means for callers: a call that completes at once neither yields nor raises `Cancelled`. Every
loop that uses these waits on something else too (the reader on `wait_readable` whenever the socket is
drained, a handler on its upstream), so nobody spins; code that must stop when cancelled checks before it
sends (`Response` writes only what a handler asks for). A peer that always has bytes ready (a fast
upstream's long body or stream, already in the socket buffer) would let its reader run on without a
yield: every `_YIELD_EVERY`-th read in a row that did not wait is a schedule point, so no connection
holds the event loop from the others for longer than that.

`os.read` / `os.write` on the socket's descriptor: the stdlib socket object is private to trio's wrapper,
and on a connected TCP socket `read(2)` and `write(2)` are `recv` and `send` without flags. Python ignores
SIGPIPE, so a write to a reset connection is `BrokenPipeError`, an `OSError` like any other failure here.
The descriptor stays owned by the `trio.SocketStream`: closing it is the stream's (`aclose`), which also
wakes any task waiting on it (trio's `notify_closing`).
"""

from __future__ import annotations

import contextlib
import os

import trio

__all__ = ["SocketIO"]

_YIELD_EVERY = 16  # reads in a row that found bytes at once, before one yields anyway


class SocketIO:
    """The hot-path reads and writes of one connected socket (see the module docstring)."""

    __slots__ = ("_eager", "_fd", "sent")

    def __init__(self, fd: int) -> None:
        self._fd = fd  # a connected non-blocking TCP socket's, owned by its trio socket or stream
        self.sent = 0  # bytes the last `send_all` wrote before it returned or raised
        self._eager = 0  # reads in a row that did not wait

    async def receive(self, max_bytes: int) -> bytes:
        """Up to `max_bytes`; b"" at EOF. Raises OSError (a reset, a closed socket)."""
        fd = self._fd
        self._eager += 1
        if self._eager >= _YIELD_EVERY:
            self._eager = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(fd)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Up to `max_bytes` if the kernel has them now (b"" at EOF), else None: then `receive_waiting`.
        None also every `_YIELD_EVERY`-th read in a row, so that a reader that never waits still yields.
        Raises OSError. What the upstream client reads with: it bounds a wait (never a read that
        completes at once) by a read timeout, so it needs the two apart."""
        eager = self._eager + 1
        if eager >= _YIELD_EVERY:
            self._eager = 0
            return None
        try:
            data = os.read(self._fd, max_bytes)
        except BlockingIOError:
            self._eager = 0
            return None
        self._eager = eager
        return data

    async def receive_waiting(self, max_bytes: int) -> bytes:
        """Up to `max_bytes`, after waiting for the socket to be readable (a checkpoint). Raises OSError."""
        fd = self._fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                continue

    def send_nowait(self, data: bytes) -> int:
        """Write what fits of `data` now; the count written (also in `sent`). Raises OSError."""
        self.sent = 0
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        self.sent = sent
        return sent

    async def send_rest(self, data: bytes) -> None:
        """The rest of `data` after `sent` bytes of it went out (`send_nowait`), waiting for room."""
        fd = self._fd
        view = memoryview(data)
        sent = self.sent
        while sent < len(view):
            await trio.lowlevel.wait_writable(fd)
            with contextlib.suppress(BlockingIOError):  # woken without room after all: wait again
                sent += os.write(fd, view[sent:])
            self.sent = sent

    async def send_all(self, data: bytes) -> None:
        """All of `data`, waiting for room only when the socket's buffer is full. Raises OSError."""
        fd = self._fd
        self.sent = 0
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        self.sent = sent
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(view):
            await trio.lowlevel.wait_writable(fd)
            with contextlib.suppress(BlockingIOError):  # woken without room after all: wait again
                sent += os.write(fd, view[sent:])
            self.sent = sent
