"""Soak: `apikeyrouter serve` in front of the simulator at a steady fraction of its measured maximum, for minutes.

    python benchmarks/soak.py [--minutes 2] [--rate 0.5] [--concurrency 16]

First the maximum: 10 s of closed-loop load at concurrency 16 (wrk if installed, else the trio load generator of
benchmarks/proxy.py). Then `--rate` of that, paced (request i is due at start + i/rate, on 16 keep-alive
connections), for `--minutes`. Every 10 s it samples the proxy's RSS and CPU time and the latencies of the
requests finished in the window, and prints one line. The summary compares the run with its own first minute:
RSS growth per minute (least-squares slope over the samples), CPU per request in the last minute against the
first, p50 in the last minute against the first, and how far behind the schedule the load fell (a proxy that
cannot keep up shows as a growing lag and a p50 that climbs with it), and the proxy's CPU with no load at all
(5 s before the run), which CPU per request includes. Each sample also says how busy the machine was with work
that is not this benchmark's (`foreign_cores`: machine busy time minus the proxy, the simulator and the load
generator, in cores) and the hypervisor's steal: a p50 that climbs while they do is the machine, not the proxy.
The last line is one JSON object.

Processes, pinning and the simulator/serve configuration are benchmarks/proxy.py's (imported, not copied): with
two or more cores the proxy runs on core 0 and the simulator and this load generator on the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import proxy as bench  # benchmarks/proxy.py: run as `python benchmarks/soak.py`, its directory is on sys.path
import trio

TICK_S = 10.0


def measure_max(url: str, concurrency: int, seconds: float, script: Path, cpus: str | None) -> float:
    if shutil.which("wrk") is not None:
        return bench.run_wrk(url, concurrency, seconds, script, cpus)["rps"]
    return bench.run_fallback_load(url, concurrency, seconds, cpus)["rps"]


class Paced:
    """Open-loop pacing over a bounded set of connections: request i is due at `start + i / rate`."""

    def __init__(self, rate: float, start: float) -> None:
        self.rate = rate
        self.start = start
        self.issued = 0
        self.latencies: list[float] = []  # seconds, send to full answer, in the current window
        self.lag: float = 0.0  # how late (s) the latest request left against its schedule
        self.errors = 0

    def next_due(self) -> float:
        due = self.start + self.issued / self.rate
        self.issued += 1
        return due


async def _worker(port: int, pace: Paced, stop_at: float) -> None:
    request = bench._http_request(port, "/v1/chat/completions")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buf = b""
        while True:
            due = pace.next_due()
            if due >= stop_at:
                return
            await trio.sleep_until(due)
            sent = trio.current_time()
            pace.lag = sent - due
            await stream.send_all(request)
            buf, ok = await bench.read_answer(stream, buf)
            pace.errors += not ok
            pace.latencies.append(trio.current_time() - sent)


def machine_ticks() -> tuple[int, int, int]:
    """(all, busy, steal) clock ticks of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return sum(fields), user + nice + system + irq + softirq, steal


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def soak(
    port: int, pid: int, others: list[int], rate: float, minutes: float, concurrency: int
) -> list[dict[str, Any]]:
    """`pid` is the proxy; `others` the rest of this benchmark (the simulator, this process): whatever else
    keeps the machine busy in a window (`foreign_cores`) belongs to someone else."""
    start = trio.current_time() + 0.5
    stop_at = start + minutes * 60
    pace = Paced(rate, start)
    samples: list[dict[str, Any]] = []

    async def sampler() -> None:
        cpu = bench.cpu_seconds(pid)
        ours = sum(bench.cpu_seconds(p) for p in others)
        ticks = machine_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        tick = start
        while tick + TICK_S <= stop_at + 0.01:
            tick += TICK_S
            await trio.sleep_until(tick)
            window, pace.latencies = pace.latencies, []
            now_cpu = bench.cpu_seconds(pid)
            now_ours = sum(bench.cpu_seconds(p) for p in others)
            now_ticks = machine_ticks()
            total, busy, steal = (b - a for a, b in zip(ticks, now_ticks, strict=True))
            foreign = busy / hz - (now_cpu - cpu) - (now_ours - ours)
            sample = {
                "t_s": round(tick - start),
                "rps": round(len(window) / TICK_S, 1),
                "rss_mib": round(bench.rss_mib(pid), 1),
                "cpu_ms_per_req": round((now_cpu - cpu) / max(1, len(window)) * 1000, 3),
                "p50_ms": round(_pct(window, 0.5) * 1000, 2),
                "p99_ms": round(_pct(window, 0.99) * 1000, 2),
                "lag_ms": round(pace.lag * 1000, 1),
                "errors": pace.errors,
                "foreign_cores": round(max(0.0, foreign) / TICK_S, 2),
                "steal_pct": round(steal / total * 100, 1) if total else 0.0,
            }
            cpu, ours, ticks = now_cpu, now_ours, now_ticks
            samples.append(sample)
            print(" ".join(f"{k}={v}" for k, v in sample.items()), flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(_worker, port, pace, stop_at)
    return samples


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / den * 60 if den else 0.0


def summarize(samples: list[dict[str, Any]], max_rps: float, rate: float) -> dict[str, Any]:
    per_minute = int(60 / TICK_S)
    first, last = samples[:per_minute], samples[-per_minute:]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 3)

    cpu_first, cpu_last = mean(first, "cpu_ms_per_req"), mean(last, "cpu_ms_per_req")
    return {
        "max_rps": round(max_rps, 1),
        "target_rps": round(rate, 1),
        "minutes": round(samples[-1]["t_s"] / 60, 2),
        "rss_first_mib": mean(first, "rss_mib"),
        "rss_last_mib": mean(last, "rss_mib"),
        "rss_growth_mib_per_min": round(_slope_per_minute([(r["t_s"], r["rss_mib"]) for r in samples]), 2),
        "cpu_ms_per_req_first_min": cpu_first,
        "cpu_ms_per_req_last_min": cpu_last,
        "cpu_drift_pct": round((cpu_last / cpu_first - 1) * 100, 1) if cpu_first else None,
        "p50_ms_first_min": mean(first, "p50_ms"),
        "p50_ms_last_min": mean(last, "p50_ms"),
        "max_lag_ms": max(r["lag_ms"] for r in samples),
        "errors": samples[-1]["errors"],
        "foreign_cores_mean": mean(samples, "foreign_cores"),
        "foreign_cores_max": max(r["foreign_cores"] for r in samples),
        "steal_pct_mean": mean(samples, "steal_pct"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the paced run (default 2)")
    parser.add_argument("--rate", type=float, default=0.5, help="fraction of the measured maximum (default 0.5)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections, for the maximum and the run")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="how long the maximum is measured")
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1: the first minute is the baseline")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    cpus = ("0", "1-" + str((os.cpu_count() or 2) - 1)) if pin else (None, None)
    work = Path(tempfile.mkdtemp(prefix="apikeyrouter-soak-"))
    script = work / "post.lua"
    script.write_text(bench.WRK_SCRIPT)
    options = argparse.Namespace(upstream="sim")
    try:
        with bench.children(options, work, cpus) as (upstream, proxy, _proxy_info):
            _proxy_info.stop()  # proxy.py also starts an info-logging serve; the soak needs one process
            url = f"{proxy.url}/v1/chat/completions"
            measure_max(url, 8, 2, script, cpus[1])  # warm up: tiktoken, connections, allocators
            idle_before = bench.cpu_seconds(proxy.pid)
            time.sleep(5)  # what the proxy burns with no load at all (timers, actors), to tell from per-request cost
            idle_ms_per_s = (bench.cpu_seconds(proxy.pid) - idle_before) / 5 * 1000
            max_rps = measure_max(url, args.concurrency, args.max_seconds, script, cpus[1])
            print(
                f"maximum: {max_rps:.0f} req/s at concurrency {args.concurrency}; soaking at {args.rate:.0%}",
                flush=True,
            )
            if cpus[1] is not None:
                first, _, last = cpus[1].partition("-")
                os.sched_setaffinity(0, range(int(first), int(last or first) + 1))
            port = int(proxy.url.rpartition(":")[2])
            others = [upstream.pid, os.getpid()]
            samples = trio.run(soak, port, proxy.pid, others, max_rps * args.rate, args.minutes, args.concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(samples, max_rps, max_rps * args.rate)
    summary["idle_cpu_ms_per_s"] = round(idle_ms_per_s, 2)
    print(
        f"RSS {summary['rss_first_mib']} -> {summary['rss_last_mib']} MiB "
        f"({summary['rss_growth_mib_per_min']:+} MiB/min); "
        f"CPU/request {summary['cpu_ms_per_req_first_min']} -> {summary['cpu_ms_per_req_last_min']} ms "
        f"({summary['cpu_drift_pct']:+}%); p50 {summary['p50_ms_first_min']} -> {summary['p50_ms_last_min']} ms; "
        f"max lag {summary['max_lag_ms']} ms; errors {summary['errors']}; "
        f"idle CPU {summary['idle_cpu_ms_per_s']} ms/s; "
        f"other tenants {summary['foreign_cores_mean']} cores (max {summary['foreign_cores_max']}), "
        f"steal {summary['steal_pct_mean']}%",
        flush=True,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - started:.0f} s")
