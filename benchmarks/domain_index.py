"""Micro-benchmark of the pure routing index: µs per `KeyIndex.top()` and per `update()`.

    python benchmarks/domain_index.py [--quick] [--junk]

Key counts 10 / 1,000 / 10,000 in three states: all healthy; half throttled; 99% quota-exhausted.
Each decision is `top(model, objective, now, k=3)` with the clock moving forward (so the wake heap is
consulted every time) and one key's view updated between decisions (as a key actor's snapshot would
be after a reservation) — the update is timed separately. The full scan (`scoring.rank`) is shown
for comparison.

`junk`: decision time for a real model before and after 10,000 requests for invented model names
(clients choose the model string). Each decision is what `RouterActor.decide` does: re-index one key
(its snapshot changed), then `top()` and `excluded_summary()`. Two layouts: 20 keys that declare no
models (the real model is served through the wildcard), and 20 keys declaring the model plus 20
wildcard keys. Figures are medians over rounds, baseline measured in the same run. The last line is
one JSON object.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from decimal import Decimal

import attrs

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


def _decide(index: KeyIndex, model: str, now: float) -> list[tuple[str, float]]:
    best = index.top(model, "reliability", now, k=3)
    index.excluded_summary(model, now, limit=5)
    if not best:
        index.earliest_available(model, now)
    return best


def _decision_us(index: KeyIndex, views: list[KeyView], now: float, rounds: int, min_s: float) -> float:
    """Median over `rounds` of the mean µs per decision (one key re-indexed + top + summary); a round
    runs for at least `min_s` and 3 decisions."""
    means: list[float] = []
    d = 0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < min_s:
            v = views[d % len(views)]
            d += 1
            index.update(attrs.evolve(v, served=v.served + 1, at=now))
            assert _decide(index, MODEL, now)
            n += 1
        means.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(means)


def bench_junk(layout: str, junk: int, rounds: int, min_s: float) -> dict[str, float]:
    wild = [KeyView(f"w{i}", "openai", default_price=PRICES[i % 2], served=i, at=0.0) for i in range(20)]
    declared = [
        KeyView(f"d{i}", "openai", models=frozenset({MODEL}), default_price=PRICES[i % 2], served=i, at=0.0)
        for i in range(20)
    ]
    views = wild if layout == "wildcard" else declared + wild
    index = KeyIndex()
    for v in views:
        index.update(v)
    ranking = _decide(index, MODEL, 1.0)
    before = _decision_us(index, views, 1.0, rounds, min_s)
    t0 = time.perf_counter()
    for i in range(junk):
        _decide(index, f"junk-model-{i}", 2.0)
    junk_us = (time.perf_counter() - t0) / junk * 1e6
    after = _decision_us(index, views, 3.0, rounds, min_s)
    assert [k for k, _ in _decide(index, MODEL, 3.0)] == [k for k, _ in ranking]
    return {"before_us": before, "after_us": after, "ratio": after / before, "junk_decision_us": junk_us}


def main_junk(quick: bool) -> dict[str, dict[str, float]]:
    rounds, min_s = (5, 0.05) if quick else (9, 0.2)
    out: dict[str, dict[str, float]] = {}
    print(f"\n{'layout':<10} {'decision µs before':>19} {'after 10k junk':>15} {'ratio':>7} {'junk decision µs':>17}")
    for layout in ("wildcard", "mixed"):
        r = bench_junk(layout, 10_000, rounds, min_s)
        out[layout] = r
        print(
            f"{layout:<10} {r['before_us']:>19.1f} {r['after_us']:>15.1f} {r['ratio']:>7.2f}"
            f" {r['junk_decision_us']:>17.1f}"
        )
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    if "--junk" in sys.argv:  # only the junk-model comparison
        print(json.dumps({"junk": {k: {m: round(x, 2) for m, x in v.items()} for k, v in main_junk(quick).items()}}))
        return
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
    junk = main_junk(quick)
    print(
        json.dumps(
            {
                "top_us": top,
                "update_us": {k: round(v["update_us"], 3) for k, v in results.items()},
                "ratio_10k_to_10": round(ratio, 2),
                "junk": {k: {m: round(x, 2) for m, x in v.items()} for k, v in junk.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
