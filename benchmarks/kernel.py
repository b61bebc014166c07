"""Kernel benchmark: ask round trip vs a raw trio memory-channel round trip (the floor), and tell throughput.

    python benchmarks/kernel.py [--n 20000] [--repeats 7]

`Echo` has a plain-`def` receive, so an ask to it while it is idle is handled by direct delivery (in the
asker's task, no scheduler pass); `AsyncEcho` is the same actor with an `async def` receive, which always
takes the mailbox path (a channel send, a reschedule of the actor, a reply event, a reschedule of the
asker). `direct+checkpoint` is a direct ask followed by `trio.lowlevel.cancel_shielded_checkpoint()`:
what making every direct ask a schedule point would cost.

Each figure is the median over `repeats` runs, measured in the same process and run, interleaved. The
last line is one JSON object: ask_roundtrip_us (direct), ask_checkpoint_us, ask_mailbox_us,
raw_roundtrip_us, ratio (direct / raw), mailbox_ratio (mailbox / raw), tell_per_s (direct),
tell_mailbox_per_s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from typing import assert_never

import attrs
import trio
import trio.testing

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


class AsyncEcho(Echo):
    async def receive(self, msg: Msg) -> None:  # type: ignore[override]
        super().receive(msg)


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


async def ask_roundtrip(n: int, kind: type[Echo] = Echo, *, checkpoint: bool = False) -> float:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[Msg] = await nursery.start(kind().run)
        await trio.testing.wait_all_tasks_blocked()  # idle: its loop waits on an empty mailbox
        start = time.perf_counter()
        for _ in range(n):
            await ref.ask(Ping)
            if checkpoint:
                await trio.lowlevel.cancel_shielded_checkpoint()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


async def tell_throughput(n: int, kind: type[Echo] = Echo) -> float:
    async with trio.open_nursery() as nursery:
        actor = kind()
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
    raw, ask, ask_cp, ask_mb, tell, tell_mb = [], [], [], [], [], []
    for _ in range(args.repeats):
        # Interleaved so that machine noise hits every side alike.
        raw.append(trio.run(raw_roundtrip, args.n))
        ask.append(trio.run(ask_roundtrip, args.n))
        ask_cp.append(trio.run(partial(ask_roundtrip, args.n, checkpoint=True)))
        ask_mb.append(trio.run(ask_roundtrip, args.n, AsyncEcho))
        tell.append(trio.run(tell_throughput, args.n * 5))
        tell_mb.append(trio.run(tell_throughput, args.n * 5, AsyncEcho))

    def ratio(xs: list[float]) -> float:
        return round(statistics.median(a / r for a, r in zip(xs, raw, strict=True)), 3)

    result = {
        "ask_roundtrip_us": round(statistics.median(ask), 3),
        "ask_checkpoint_us": round(statistics.median(ask_cp), 3),
        "ask_mailbox_us": round(statistics.median(ask_mb), 3),
        "raw_roundtrip_us": round(statistics.median(raw), 3),
        "ratio": ratio(ask),
        "mailbox_ratio": ratio(ask_mb),
        "tell_per_s": round(statistics.median(tell)),
        "tell_mailbox_per_s": round(statistics.median(tell_mb)),
        "repeats": args.repeats,
        "n": args.n,
    }
    print(f"ask round trip, direct (median of {args.repeats}): {result['ask_roundtrip_us']} us")
    print(f"ask round trip, direct + a schedule point:  {result['ask_checkpoint_us']} us")
    print(f"ask round trip, mailbox (async receive):    {result['ask_mailbox_us']} us")
    print(f"raw memory-channel round trip (floor):      {result['raw_roundtrip_us']} us")
    print(f"tell throughput: direct {result['tell_per_s']} msgs/s, mailbox {result['tell_mailbox_per_s']} msgs/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
