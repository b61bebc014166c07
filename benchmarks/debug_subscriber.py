"""Does a debug-channel subscriber that stops reading slow routing? (issue 6)

    python benchmarks/debug_subscriber.py [--requests 1500] [--repeats 5]

Routes requests through the embedded router (simulator upstream on 127.0.0.1) in three conditions,
interleaved per round: no subscriber; a subscriber that reads every event; a subscriber that subscribed
to everything and then never reads again (its socket buffer fills, its queue fills, the server drops
it). Prints each condition's median routes/s and the ratios; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import structlog
import trio

from apikeyrouter import ApiKeyRouter
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.debug import open_debug_channel
from apikeyrouter.debug.client import DebugClient, connect
from apikeyrouter.sim import SimServer, parse_sim_config

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}


async def rate(router: ApiKeyRouter, n: int, concurrency: int = 16) -> float:
    sem = trio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await router.route(CHAT)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await sem.acquire()
            sem.release()
            nursery.start_soon(one)
    return n / (time.perf_counter() - start)


async def main(requests: int, repeats: int) -> dict[str, float]:
    sim = SimServer(parse_sim_config({"defaults": {"rpm": 10**9, "tpm": 10**12}}))
    results: dict[str, list[float]] = {"none": [], "reading": [], "stuck": []}
    dropped = 0
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        socket = str(Path(tempfile.mkdtemp(prefix="akr-bench-")) / "debug.sock")
        async with ApiKeyRouter() as router, open_debug_channel(router, socket) as server:
            await router.register_provider("sim", OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1"))
            for i in range(4):
                await router.register_key(f"sk-sim-{i}", "sim", key_id=f"k{i}")
            await rate(router, 200)  # warm up connections
            for _ in range(repeats):
                results["none"].append(await rate(router, requests))

                reader = await connect(socket)
                await reader.request({"op": "subscribe", "events": []})

                async def drain(client: DebugClient = reader) -> None:
                    while await client.receive() is not None:
                        pass

                async with trio.open_nursery() as readers:
                    readers.start_soon(drain)
                    results["reading"].append(await rate(router, requests))
                    readers.cancel_scope.cancel()
                await reader.aclose()

                stuck = await connect(socket)
                await stuck.request({"op": "subscribe", "events": []})  # ...and never reads again
                results["stuck"].append(await rate(router, requests))
                await stuck.aclose()
            dropped = server.server_status().dropped_slow + router.events.dropped_subscribers
        nursery.cancel_scope.cancel()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "routes_per_s_no_subscriber": round(med["none"], 1),
        "routes_per_s_reading_subscriber": round(med["reading"], 1),
        "routes_per_s_stuck_subscriber": round(med["stuck"], 1),
        "ratio_stuck_to_none": round(med["stuck"] / med["none"], 3),
        "ratio_reading_to_none": round(med["reading"] / med["none"], 3),
        "repeats": repeats,
        "requests": requests,
        "dropped_subscribers": dropped,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    out = trio.run(main, args.requests, args.repeats)
    print(f"no subscriber:      {out['routes_per_s_no_subscriber']} routes/s (median of {args.repeats})")
    print(f"reading subscriber: {out['routes_per_s_reading_subscriber']} routes/s")
    print(f"stuck subscriber:   {out['routes_per_s_stuck_subscriber']} routes/s")
    print(json.dumps(out))
