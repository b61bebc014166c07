"""What the shared Redis store adds per routed request: latency and CPU, against the memory store, same run.

    PYTHONPATH=src python benchmarks/redis_store.py [--requests 400] [--rounds 5] [--budget] [--client-rpm N]

Starts `redis-server` (temp port, no persistence) and `apikeyrouter sim` in their own processes, then
opens two embedded routers in this process on the same simulator: one with `[store] kind = "memory"`, one
with `kind = "redis"`. Rounds are interleaved (memory, redis, memory, ...) so both see the same machine
noise; each round sends `--requests` sequential requests through `router.route` and records the wall time
of each and this process's CPU time for the round (`time.process_time`, all threads: the redis client
runs in worker threads). With `--budget` both routers also hold a global budget (the redis one on Redis);
with `--client-rpm N` every request is a client's with that rpm (its window shared on Redis, where the
tree has it).

Rounds are short (50 requests) and many (20) so that load from other tenants of the machine falls on both
stores alike. Also measured, the floor under the redis figures: one script call through the link (a
worker thread and an EVALSHA round trip), 200 times. Reported, as medians over rounds: per-request
latency (median, p90) for each store, the difference, CPU µs per request for each and the difference,
and redis-server's own CPU per request (INFO cpu).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import structlog
import trio

from apikeyrouter.config import parse_config
from apikeyrouter.runtime import ApiKeyRouter, open_router

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: apt-get install -y redis-server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if redis.Redis(port=port).ping():
                return proc, port
        except redis.RedisError:
            time.sleep(0.02)
    sys.exit("redis-server did not start")


def start_sim() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "apikeyrouter", "sim", "--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"the simulator did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def config(sim_url: str, store: dict[str, Any], budget: bool, client_rpm: int | None = None) -> Any:
    data: dict[str, Any] = {
        "providers": [{"id": "sim", "kind": "openai", "base_url": f"{sim_url}/v1", "models": ["gpt-4o-mini"]}],
        "keys": [{"id": f"k{i}", "provider": "sim", "secret": f"sk-bench-{i}", "rpm": 1_000_000} for i in range(4)],
        "store": store,
        "debug": {"enabled": False},
        "logging": {"level": "warning"},
    }
    if budget:
        data["budgets"] = {"global": {"limit": "1000000", "period": "day"}}
    if client_rpm is not None:
        data["clients"] = [{"id": "bench", "rpm": client_rpm}]
    return parse_config(data, {}, "<bench>")


async def one_round(router: ApiKeyRouter, n: int, client: str | None = None) -> tuple[list[float], float]:
    times = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await router.route(CHAT, client=client)
        times.append(time.perf_counter() - t0)
    return times, time.process_time() - cpu0


def redis_cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(args: argparse.Namespace, sim_url: str, redis_port: int) -> dict[str, Any]:
    memory_cfg = config(sim_url, {"kind": "memory"}, args.budget, args.client_rpm)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_cfg = config(sim_url, {"kind": "redis", "url": redis_url}, args.budget, args.client_rpm)
    client = None if args.client_rpm is None else "bench"
    results: dict[str, dict[str, list[float]]] = {s: {"median": [], "p90": [], "cpu": []} for s in ("memory", "redis")}
    server_cpu: list[float] = []
    async with open_router(memory_cfg) as memory, open_router(redis_cfg) as shared:
        routers = {"memory": memory, "redis": shared}
        for router in routers.values():  # warm up: connections, tokenizer, scripts loaded
            await one_round(router, 50, client)
        for i in range(args.rounds):
            for name, router in routers.items():
                before = redis_cpu(redis_port)
                times, cpu = await one_round(router, args.requests, client)
                if name == "redis":
                    server_cpu.append((redis_cpu(redis_port) - before) / args.requests)
                qs = statistics.quantiles(times, n=10)
                results[name]["median"].append(statistics.median(times))
                results[name]["p90"].append(qs[8])
                results[name]["cpu"].append(cpu / args.requests)
                if args.verbose:
                    print(
                        f"round {i + 1} {name:6}: median {statistics.median(times) * 1e6:7.0f} µs  "
                        f"p90 {qs[8] * 1e6:7.0f} µs  cpu {cpu / args.requests * 1e6:6.0f} µs/req",
                        flush=True,
                    )
        # The floor under the redis figures: one script call through the link (worker thread + EVALSHA).
        link = shared.shared.link if shared.shared is not None else None
        assert link is not None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(200):
            await link.heartbeat("bench-probe", 1, fresh=False)
        call_cpu, call_wall = (time.process_time() - cpu0) / 200, (time.perf_counter() - wall0) / 200
    med = {s: {k: statistics.median(v) * 1e6 for k, v in r.items()} for s, r in results.items()}
    return {
        "bench": "redis_store",
        "budget": args.budget,
        "client_rpm": args.client_rpm,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "latency_median_us": {s: round(m["median"]) for s, m in med.items()},
        "latency_p90_us": {s: round(m["p90"]) for s, m in med.items()},
        "added_latency_median_us": round(med["redis"]["median"] - med["memory"]["median"]),
        "cpu_us_per_request": {s: round(m["cpu"]) for s, m in med.items()},
        "added_cpu_us_per_request": round(med["redis"]["cpu"] - med["memory"]["cpu"]),
        "redis_server_cpu_us_per_request": round(statistics.median(server_cpu) * 1e6),
        "one_redis_call_us": {"cpu": round(call_cpu * 1e6), "wall": round(call_wall * 1e6)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--budget", action="store_true", help="hold a global budget too")
    parser.add_argument("--client-rpm", type=int, default=None, help="every request a client's with this rpm")
    parser.add_argument("--verbose", action="store_true", help="print every round")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory() as workdir:
        redis_proc, redis_port = start_redis(workdir)
        sim_proc, sim_url = start_sim()
        try:
            summary = trio.run(run, args, sim_url, redis_port)
        finally:
            sim_proc.terminate()
            redis_proc.terminate()
            sim_proc.wait()
            redis_proc.wait()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
