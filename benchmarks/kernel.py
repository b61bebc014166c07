"""Kernel benchmark: ask round trip vs a raw trio memory-channel round trip (the floor), and tell throughput.

    python benchmarks/kernel.py [--n 20000] [--repeats 7]

Each figure is the median over `repeats` runs, measured in the same process and run. The last line is one
JSON object: ask_roundtrip_us, raw_roundtrip_us, ratio, tell_per_s (target: ratio <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import assert_never

import attrs
import trio

from apikeyrouter.kernel import Actor, ActorRef, Reply


@attrs.frozen
class Ping:
    reply_to: Reply[int]


@attrs.frozen
class Bump:
    pass


Msg = Ping | Bump


class Echo(Actor[Msg]):
    def __init__(self) -> None:
        super().__init__("echo", mailbox=1024)
        self.count = 0

    def receive(self, msg: Msg) -> None:
        match msg:
            case Ping(reply_to=reply):
                reply.send(self.count)
            case Bump():
                self.count += 1
            case _:
                assert_never(msg)


async def raw_roundtrip(n: int) -> float:
    req_send, req_recv = trio.open_memory_channel[int](1)
    resp_send, resp_recv = trio.open_memory_channel[int](1)

    async def server() -> None:
        async for x in req_recv:
            await resp_send.send(x)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        start = time.perf_counter()
        for i in range(n):
            await req_send.send(i)
            await resp_recv.receive()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


async def ask_roundtrip(n: int) -> float:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[Msg] = await nursery.start(Echo().run)
        start = time.perf_counter()
        for _ in range(n):
            await ref.ask(Ping)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


async def tell_throughput(n: int) -> float:
    async with trio.open_nursery() as nursery:
        actor = Echo()
        ref: ActorRef[Msg] = await nursery.start(actor.run)
        start = time.perf_counter()
        for _ in range(n):
            await ref.tell(Bump())
        await ref.ask(Ping)  # everything before it has been handled
        elapsed = time.perf_counter() - start
        assert actor.count == n
        nursery.cancel_scope.cancel()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    raw, ask, tell = [], [], []
    for _ in range(args.repeats):
        # Interleaved so that machine noise hits both sides alike.
        raw.append(trio.run(raw_roundtrip, args.n))
        ask.append(trio.run(ask_roundtrip, args.n))
        tell.append(trio.run(tell_throughput, args.n * 5))
    result = {
        "ask_roundtrip_us": round(statistics.median(ask), 3),
        "raw_roundtrip_us": round(statistics.median(raw), 3),
        "ratio": round(statistics.median(a / r for a, r in zip(ask, raw, strict=True)), 3),
        "tell_per_s": round(statistics.median(tell)),
        "repeats": args.repeats,
        "n": args.n,
    }
    print(f"ask round trip (median of {args.repeats}): {result['ask_roundtrip_us']} us")
    print(f"raw memory-channel round trip (floor):  {result['raw_roundtrip_us']} us")
    print(f"tell throughput: {result['tell_per_s']} msgs/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
