"""What persistence costs a routed request: the memory store against the SQLite store (and the Redis store,
when `redis-server` is on PATH), same run, same load.

    PYTHONPATH=src python benchmarks/store.py [--calls 1000] [--rounds 9] [--concurrency 32] [--no-redis]

Each round runs the same calls through a router on each store, one after the other, the order rotated
each round (so drift on a shared machine hits them alike): `concurrency` trio tasks calling `route()`
against the simulator's handler in-process (`benchmarks/aio.py`'s adapter: no sockets, but one checkpoint
per upstream call, where a socket read would wait: without it nothing on the path yields and the writer
never flushes during the timed calls), 4 keys, a global budget (so every request also holds and charges
money). Per store, per round:

- CPU µs per request: `time.process_time()` over the calls (every thread: the SQLite worker thread too),
  divided by the calls;
- event-loop CPU µs per request: `time.thread_time()` of the trio thread alone, what the request path and
  the event loop pay (the worker threads' CPU left out, though their holding the GIL is not): SQLite's
  minus memory's, same round, is the on-path cost the target bounds; all-threads minus it is off-path;
- wall µs per request (the added latency; writes are off the request path, so it should be noise);
- the CPU the SQLite worker thread spent encoding and writing (`SqliteStore.write_cpu_s`, measured with
  `time.thread_time()` in that thread), per request: the part of the added CPU that is off the request
  path; the rest (added minus this) is what the request path and the event loop pay;
- writes/s: changes the store writer took in (`Save` messages: one per change of one record, plus the
  history rows), and the transactions (batches) it committed, over the wall time of the calls.

The Redis round is `[store] kind = "redis"` on a `redis-server` this script starts (no persistence, flushed
before each round): the Redis store for records and history, and the shared limits, so each request also
makes its reserve round trip and a batched settle (the budget is held on Redis).

The SQLite round ends with the router's stop, which writes what is still pending: that flush is outside
the timed calls (it is not on any request's path) but inside the check that the file holds every request.
Figures are medians over rounds; the last line is one JSON object (target: sqlite adds <= 50 µs CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import structlog
import trio
from aio import CHAT, KEYS, InProcessAdapter, trio_calls  # benchmarks/aio.py: run as `python benchmarks/store.py`
from redis_store import free_port  # benchmarks/redis_store.py

from apikeyrouter import ApiKeyRouter
from apikeyrouter.config import parse_config
from apikeyrouter.store import MemoryStore, SqliteStore, StateStore
from apikeyrouter.store.redis_store import RedisStore

CONFIG = {"budgets": {"global": {"limit": "1000000", "period": "month"}}}


class _Yielding(httpx.AsyncBaseTransport):
    """The in-process upstream, made to yield to the scheduler once per call as a socket read would.
    Without it nothing on the request path waits, each caller task runs all its calls in one scheduler
    step, and the writer's flush task (and so every write) runs only after the timed calls."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        return await self._inner.handle_async_request(request)


class YieldingAdapter(InProcessAdapter):
    def make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=_Yielding(self._transport), base_url=self.base_url)


def _store_state(router: ApiKeyRouter) -> dict[str, Any]:
    node = next(n for n in router.tree().children if n.name == "store")
    state: dict[str, Any] = node.state
    return state


def one_round(store: StateStore, calls: int, concurrency: int, redis_url: str | None = None) -> dict[str, float]:
    # redis_deadline: at load ~4 the 0.25 s default timed out, failing the hard budget closed mid-round.
    shared = {"kind": "redis", "url": redis_url, "redis_deadline": 2.0}
    config = CONFIG if redis_url is None else {**CONFIG, "store": shared}

    async def main() -> dict[str, float]:
        async with ApiKeyRouter(parse_config(config, env={}), store=store) as router:
            await router.register_provider("openai", YieldingAdapter())
            for i in range(KEYS):
                await router.register_key(f"sk-sim-bench-{i}", "openai", key_id=f"k{i}")
            for _ in range(20):  # warm: clients made, tokenizer tables paged in
                await router.route(CHAT)
            await router.flush_store()
            before = _store_state(router)
            writer_cpu = getattr(store, "write_cpu_s", 0.0)
            cpu, loop, wall = time.process_time(), time.thread_time(), time.perf_counter()
            await trio_calls(router, calls, concurrency)
            cpu, loop = time.process_time() - cpu, time.thread_time() - loop
            wall = time.perf_counter() - wall
            after = _store_state(router)
            writer_cpu = getattr(store, "write_cpu_s", 0.0) - writer_cpu  # the timed calls' share, roughly
        made = calls // concurrency * concurrency
        return {
            "cpu_us": cpu / made * 1e6,
            "loop_cpu_us": loop / made * 1e6,
            "wall_us": wall / made * 1e6,
            "writer_thread_cpu_us": writer_cpu / made * 1e6,
            "saves_per_s": (after["saves"] - before["saves"]) / wall,
            "batches_per_s": (after["batches"] - before["batches"]) / wall,
        }

    return trio.run(main)


def _check_file(path: Path, expected_requests: int) -> None:
    async def main() -> None:
        store = SqliteStore(path)
        records = await store.open(0.0)
        await store.close()
        got = sum(r.stats.requests for (kind, _), r in records.items() if kind == "key")
        assert got == expected_requests, f"the file holds {got} requests, {expected_requests} were made"

    trio.run(main)


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if redis.Redis(port=port).ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def _redis_round(url: str, calls: int, concurrency: int) -> dict[str, float]:
    redis.Redis.from_url(url).flushall()
    return one_round(RedisStore(url, "bench"), calls, concurrency, redis_url=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-redis", action="store_true", help="leave the Redis store out")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.no_redis else _start_redis(tmp)
        if server is not None:
            results["redis"] = []
        try:
            _rounds(args, tmp, results, server[1] if server is not None else None)
        finally:
            if server is not None:
                server[0].kill()
                server[0].wait()
    _report(args, results)


def _rounds(args: argparse.Namespace, tmp: str, results: dict[str, list[dict[str, float]]], url: str | None) -> None:
    for n in range(args.rounds):
        path = Path(tmp) / f"round-{n}.db"
        runs = {
            "memory": lambda: one_round(MemoryStore(), args.calls, args.concurrency),
            "sqlite": lambda: one_round(SqliteStore(path), args.calls, args.concurrency),  # noqa: B023 (run now)
        }
        if url is not None:
            runs["redis"] = lambda: _redis_round(url, args.calls, args.concurrency)
        names = list(runs)
        order = names[n % len(names) :] + names[: n % len(names)]  # rotated: no store always runs first
        for name in order:
            results[name].append(runs[name]())
        _check_file(path, args.calls // args.concurrency * args.concurrency + 20)
        for name in names:
            r = results[name][-1]
            print(
                f"round {n + 1} {name:6}  cpu {r['cpu_us']:7.1f} µs/req (loop {r['loop_cpu_us']:7.1f})  "
                f"wall {r['wall_us']:7.1f} µs/req  saves {r['saves_per_s']:8.0f}/s  "
                f"transactions {r['batches_per_s']:6.1f}/s"
            )


def _report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    # Each store against the memory round of the same round (run next to each other): the median of the
    # differences, so drift between rounds cancels.
    added = {
        name: {
            fig: round(statistics.median(r[fig] - m[fig] for m, r in zip(results["memory"], rs, strict=True)), 1)
            for fig in ("cpu_us", "loop_cpu_us", "wall_us")
        }
        for name, rs in results.items()
        if name != "memory"
    }
    for figs in added.values():
        figs["off_loop_cpu_us"] = round(figs["cpu_us"] - figs["loop_cpu_us"], 1)
    print(
        f"median per request: memory {med['memory']['cpu_us']:.1f} µs CPU ({med['memory']['loop_cpu_us']:.1f} on "
        f"the event loop), sqlite {med['sqlite']['cpu_us']:.1f} ({med['sqlite']['loop_cpu_us']:.1f}); "
        f"{med['sqlite']['saves_per_s']:.0f} changes/s in {med['sqlite']['batches_per_s']:.1f} transactions/s"
    )
    for name, figs in added.items():
        print(
            f"{name} adds (median of same-round differences): on the request path (event-loop thread) "
            f"{figs['loop_cpu_us']:.1f} µs CPU; off it (worker threads) {figs['off_loop_cpu_us']:.1f} µs"
            + (f" (the SQLite writer thread: {med['sqlite']['writer_thread_cpu_us']:.1f})" if name == "sqlite" else "")
            + f"; {figs['wall_us']:.1f} µs wall"
        )
    print("target: sqlite adds <= 50 µs CPU per request on the request path")
    summary = {
        "calls": args.calls,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "median": {k: {m: round(v, 1) for m, v in d.items()} for k, d in med.items()},
        "sqlite_added_request_path_cpu_us": added["sqlite"]["loop_cpu_us"],
        "sqlite_added_off_path_cpu_us": added["sqlite"]["off_loop_cpu_us"],
        "sqlite_writer_thread_cpu_us": round(med["sqlite"]["writer_thread_cpu_us"], 1),
        "added_vs_memory": added,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
