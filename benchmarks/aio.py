"""What a `route()` call costs through `apikeyrouter.aio` against the trio API, same upstream, same run.

    PYTHONPATH=src python benchmarks/aio.py [--calls 400] [--rounds 7] [--concurrency 16]

The upstream is the simulator's request handler in-process (`SimProvider.handle` behind an
`httpx.MockTransport`): no sockets, so what is measured is the router plus the crossing. Three ways to
make the same calls, each round running all three one after the other (so drift hits them alike):

- trio:  `trio.run`, `await router.route(...)` on the trio facade;
- guest: the same trio code, but as a trio guest run on an asyncio loop (`aio.open_router`, the calls
         made inside one `run_trio`): what guest mode itself costs, without a crossing per call;
- aio:   `await router.route(...)` on `aio.AsyncRouter` from asyncio: a crossing into trio and back
         per call;
- null:  `await router.run_trio(trio.lowlevel.checkpoint)`: the crossing alone, with no router work.

Each is measured sequentially (one call at a time: the latency a single request pays) and with
`concurrency` asyncio/trio tasks at once (the crossing's cost amortised over a busy loop). Figures are
CPU µs per call (`time.process_time()`: every thread of the process, trio's I/O-wait thread included)
and wall µs per call, medians over rounds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog
import trio

from apikeyrouter import ApiKeyRouter, aio
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.sim import SimProvider, parse_sim_config

BASE_URL = "http://sim.bench/v1"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
KEYS = 4


class InProcessAdapter(OpenAIAdapter):
    """The OpenAI adapter on the simulator's handler, in-process (no sockets)."""

    def __init__(self) -> None:
        super().__init__(base_url=BASE_URL)
        sim = SimProvider(parse_sim_config({"defaults": {"rpm": 10**9, "tpm": 10**12}}))

        def handler(request: httpx.Request) -> httpx.Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            reply = sim.handle(request.method, request.url.raw_path.decode("latin-1"), headers, request.content)
            raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers]
            return httpx.Response(reply.status, headers=raw, content=reply.body)

        self._transport = httpx.MockTransport(handler)

    def make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, base_url=BASE_URL)


Measure = tuple[float, float]  # (cpu µs/call, wall µs/call)


def _timed(calls: int, fn: Callable[[], Any]) -> Callable[[], Awaitable[Measure]]:
    async def run() -> Measure:
        cpu, wall = time.process_time(), time.perf_counter()
        await fn()
        return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6

    return run


async def _setup_trio(router: ApiKeyRouter) -> None:
    await router.register_provider("openai", InProcessAdapter())
    for i in range(KEYS):
        await router.register_key(f"sk-sim-bench-{i}", "openai", key_id=f"k{i}")
    for _ in range(20):  # warm: clients made, tokenizer tables paged in
        await router.route(CHAT)


async def trio_calls(router: ApiKeyRouter, calls: int, concurrency: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            await router.route(CHAT)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, calls // concurrency)


async def aio_calls(router: aio.AsyncRouter, calls: int, concurrency: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            await router.route(CHAT)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker(calls // concurrency))


def round_trio(calls: int, concurrency: int) -> Measure:
    async def main() -> Measure:
        async with ApiKeyRouter() as router:
            await _setup_trio(router)
            return await _timed(calls, lambda: trio_calls(router, calls, concurrency))()

    return trio.run(main)


def round_guest(calls: int, concurrency: int) -> Measure:
    async def main() -> Measure:
        async with aio.open_router() as router:
            await router.run_trio(_setup_trio, router.trio_router)
            run = _timed(calls, lambda: router.run_trio(trio_calls, router.trio_router, calls, concurrency))
            return await run()

    return asyncio.run(main())


def round_aio(calls: int, concurrency: int) -> Measure:
    async def main() -> Measure:
        async with aio.open_router() as router:
            await router.run_trio(_setup_trio, router.trio_router)
            return await _timed(calls, lambda: aio_calls(router, calls, concurrency))()

    return asyncio.run(main())


def round_null(calls: int, concurrency: int) -> Measure:
    async def main() -> Measure:
        async with aio.open_router() as router:

            async def crossings() -> None:
                async def worker(n: int) -> None:
                    for _ in range(n):
                        await router.run_trio(trio.lowlevel.checkpoint)

                async with asyncio.TaskGroup() as group:
                    for _ in range(concurrency):
                        group.create_task(worker(calls // concurrency))

            await crossings()  # warm
            return await _timed(calls, crossings)()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    modes = {"trio": round_trio, "guest": round_guest, "aio": round_aio, "null": round_null}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, concurrency in (("sequential", 1), (f"concurrency_{args.concurrency}", args.concurrency)):
        samples: dict[str, list[Measure]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, fn in modes.items():
                samples[mode].append(fn(args.calls, concurrency))
        results[label] = {
            mode: {
                "cpu_us": round(statistics.median(s[0] for s in got), 1),
                "wall_us": round(statistics.median(s[1] for s in got), 1),
            }
            for mode, got in samples.items()
        }
        row = results[label]
        for mode in modes:
            cpu, wall = row[mode]["cpu_us"], row[mode]["wall_us"]
            print(f"{label:>16} {mode:>5}: {cpu:8.1f} µs CPU/call {wall:8.1f} µs wall/call")
        added = row["aio"]["cpu_us"] - row["trio"]["cpu_us"]
        print(f"{label:>16} aio - trio: {added:+.1f} µs CPU/call ({row['aio']['cpu_us'] / row['trio']['cpu_us']:.2f}x)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
