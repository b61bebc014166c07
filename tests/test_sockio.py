"""The socket reads and writes of the hot path (adapters/sockio.py): no scheduler pass when the kernel has the
bytes or the room, yet no task keeps the event loop from the others while its peer always has bytes ready."""

from __future__ import annotations

import trio

from apikeyrouter.adapters.sockio import SocketIO


async def test_reads_that_never_wait_still_let_other_tasks_run() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        await a.send(b"x" * 64 * 100)  # everything is in b's buffer before the reader starts
        io = SocketIO(b.fileno())
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()  # the ticker has started
            before = turns
            got = b""
            for _ in range(100):
                got += await io.receive(64)  # each finds its bytes at once: no wait
            seen = turns - before
            done = True
        assert got == b"x" * 6400
        assert 100 // 16 - 1 <= seen <= 100 // 16 + 1  # one yield every 16 reads, not one per read


async def test_a_send_that_fits_writes_at_once_and_counts_what_it_wrote() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        io = SocketIO(a.fileno())
        await io.send_all(b"hello")
        assert io.sent == 5
        assert await b.recv(16) == b"hello"


async def test_a_send_larger_than_the_buffer_waits_for_room_and_writes_it_all() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        io = SocketIO(a.fileno())
        data = bytes(range(256)) * 16_384  # 4 MiB: far more than a socket buffer holds
        received = bytearray()

        async def drain() -> None:
            while len(received) < len(data):
                received.extend(await b.recv(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await io.send_all(data)
        assert bytes(received) == data and io.sent == len(data)
