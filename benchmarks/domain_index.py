"""Micro-benchmark of the pure routing index: µs per `KeyIndex.top()` and per `update()`.

    python benchmarks/domain_index.py [--quick]

Key counts 10 / 1,000 / 10,000 in three states: all healthy; half throttled; 99% quota-exhausted.
Each decision is `top(model, objective, now, k=3)` with the clock moving forward (so the wake heap is
consulted every time) and one key's view updated between decisions (as a key actor's snapshot would
be after a reservation) — the update is timed separately. The full scan (`scoring.rank`) is shown
for comparison. The last line is one JSON object.
"""

from __future__ import annotations

import json
import random
import sys
import time
from decimal import Decimal

from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.index import KeyIndex
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import CapacityState
from apikeyrouter.domain.scoring import KeyView, rank

MODEL = "gpt-4o-mini"
PRICES = [ModelPrice(Decimal("0.15"), Decimal("0.60")), ModelPrice(Decimal("2.50"), Decimal("10.00"))]


def make_view(i: int, state: str, rnd: random.Random, at: float) -> KeyView:
    lifecycle, until, capacity, retry_at = KeyState.ACTIVE, None, CapacityState.ABUNDANT, None
    if state == "half_throttled" and i % 2:
        lifecycle, until = KeyState.THROTTLED, 1e9
    elif state == "exhausted_99" and i % 100:
        capacity, retry_at = CapacityState.EXHAUSTED, 1e9
    return KeyView(
        key_id=f"k{i}",
        provider="openai",
        models=frozenset({MODEL}),
        default_price=PRICES[i % 2],
        lifecycle=lifecycle,
        lifecycle_until=until,
        capacity=capacity,
        capacity_left=0.0 if retry_at else rnd.random(),
        capacity_retry_at=retry_at,
        success_ewma=rnd.uniform(0.8, 1.0),
        latency_ewma_s=rnd.uniform(0.2, 3.0),
        recent_requests=rnd.uniform(0, 50),
        in_flight=rnd.randrange(4),
        in_flight_limit=16,
        served=rnd.randrange(1000),
        at=at,
    )


def bench(n: int, state: str, decisions: int) -> dict[str, float]:
    rnd = random.Random(n)
    index = KeyIndex()
    views = [make_view(i, state, rnd, 0.0) for i in range(n)]
    for v in views:
        index.update(v)
    index.top(MODEL, "reliability", 0.0, k=3)  # build the objective's order once, as the first request would
    healthy = [v for v in views if v.lifecycle is KeyState.ACTIVE and v.capacity is not CapacityState.EXHAUSTED]
    now, top_s, upd_s = 1.0, 0.0, 0.0
    for d in range(decisions):
        now += 0.001
        t0 = time.perf_counter()
        best = index.top(MODEL, "reliability", now, k=3)
        t1 = time.perf_counter()
        top_s += t1 - t0
        assert best
        v = healthy[d % len(healthy)]
        v2 = make_view(int(v.key_id[1:]), state, rnd, now)
        t2 = time.perf_counter()
        index.update(v2)
        upd_s += time.perf_counter() - t2
        views[int(v.key_id[1:])] = v2
    scans = max(3, min(200, 20_000 // n))
    t0 = time.perf_counter()
    for _ in range(scans):
        rank(views, MODEL, "reliability", now, 3)
    scan_s = (time.perf_counter() - t0) / scans
    return {"top_us": top_s / decisions * 1e6, "update_us": upd_s / decisions * 1e6, "scan_us": scan_s * 1e6}


def main() -> None:
    quick = "--quick" in sys.argv
    decisions = 2_000 if quick else 20_000
    results: dict[str, dict[str, float]] = {}
    print(f"{'keys':>7} {'state':<16} {'top() µs':>10} {'update() µs':>12} {'full scan µs':>13}")
    for n in (10, 1_000, 10_000):
        for state in ("healthy", "half_throttled", "exhausted_99"):
            r = bench(n, state, decisions)
            results[f"{n}/{state}"] = r
            print(f"{n:>7} {state:<16} {r['top_us']:>10.2f} {r['update_us']:>12.2f} {r['scan_us']:>13.1f}")
    top = {k: round(v["top_us"], 3) for k, v in results.items()}
    ratio = max(
        results[f"10000/{s}"]["top_us"] / results[f"10/{s}"]["top_us"]
        for s in ("healthy", "half_throttled", "exhausted_99")
    )
    print(
        json.dumps(
            {
                "top_us": top,
                "update_us": {k: round(v["update_us"], 3) for k, v in results.items()},
                "ratio_10k_to_10": round(ratio, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
