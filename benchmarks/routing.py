"""Routing decision time through the real actors: eligibility + scoring + reservation, no I/O.

    PYTHONPATH=src python benchmarks/routing.py [--quick] [--repeats 5] [--iterations 2000]

A running `ApiKeyRouter` with N keys (N = 10, 1,000, 10,000) behind one provider whose adapter points at
an unused base_url (nothing is ever sent), in three states driven through the key actors themselves:

- healthy:        every key active;
- half_throttled: every odd key got a reservation settled as `rate_limited` (Retry-After 1 h);
- exhausted_99:   all but one key in a hundred got one settled as `quota_exhausted` (benched 1 h).

The resulting lifecycles are checked in `router.keys()` before measuring. One decision is what the
request path's acquire step (runtime/acquire.py) does per attempt, minus the token estimate (it depends
on the request, not on the keys): ask the RouterActor `Decide`, look the chosen key actor up, ask it
to `Reserve`, then tell it `Release` so its quota never drains (the release is handled while the next
decision waits, so it is inside the figure). Each figure is the median over `repeats` runs of the median
per-decision time (the mean is printed too: it carries the garbage collector's occasional full passes).

Also, in the same run: the pure in-process `RouterActor.decide()` call (no mailbox, nothing changed
since the previous decision, so no re-indexing), and the baseline a router without an index would pay —
`scoring.rank` scanning every key's view. RSS per key actor is the resident-set growth while the first
10,000 keys are registered, divided by 10,000: the actor with its task and mailbox, its supervisor slot,
its stored record, its published snapshot and its place in the router's index.

Policies (issue 11): `decide()+100 pol.` is the pure decision with 100 policies loaded — 98 scoped to
other clients, one global eligibility filter every key passes, one global routing policy — i.e. what the
request path pays: the cached effective-policy lookup (runtime/policies.py) plus `decide()` reading it.
It is measured in rounds interleaved with the plain `decide()` rounds, and `policy_ratio` is their ratio
(goal <= 2).

The last line is one JSON object: decision_us {N: {state: µs}}, ratio_10k_to_10 (healthy), pure_decide_us,
policy_decide_us, policy_ratio, scan_us, rss_per_key_kib, register_us_per_key (targets from issue 4:
<= 20 µs at 10,000 keys, ratio <= 2).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import structlog
import trio
import trio.testing

from apikeyrouter.actors.router import RouterActor, view_of
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.domain.decision import RoutingDecision
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.policy import Match, Policy, PolicyEffect, Universe
from apikeyrouter.domain.scoring import rank
from apikeyrouter.kernel.actor import ActorRef, Reply
from apikeyrouter.messages.key import Granted, KeyCommand, Outcome, Release, Reserve, Settle
from apikeyrouter.messages.router import Decide
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.runtime.policies import PolicyBook

MODEL = "gpt-4o-mini"
OBJECTIVE = "reliability"
PROVIDER = "openai"
UNUSED_URL = "http://127.0.0.1:9/v1"  # the discard port: never contacted, no call is made
COUNTS = (10, 1_000, 10_000)
STATES = ("healthy", "half_throttled", "exhausted_99")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _benched(i: int, state: str) -> FailureClass | None:
    if state == "half_throttled" and i % 2:
        return FailureClass.RATE_LIMITED
    if state == "exhausted_99" and i % 100:
        return FailureClass.QUOTA_EXHAUSTED
    return None


async def drive_state(router: ApiKeyRouter, n: int, state: str) -> Counter[str]:
    """Bench keys the way a real failure would: a granted reservation settled with the failure class."""
    for i in range(n):
        failure = _benched(i, state)
        if failure is None:
            continue
        ref: ActorRef[KeyCommand] = router.key_ref(f"k{i}")
        grant = await ref.ask(lambda r: Reserve("setup", MODEL, 16, Decimal(0), trio.current_time() + 60, r))
        assert isinstance(grant, Granted), grant
        await ref.tell(Settle(grant.reservation_id, Outcome(failure, retry_after=3600.0, message="benchmark")))
    await trio.testing.wait_all_tasks_blocked()
    return Counter(k["lifecycle"] for k in router.keys())


_EXPECTED = {
    "healthy": lambda n: {"active": n},
    "half_throttled": lambda n: {"active": n - n // 2, "throttled": n // 2},
    "exhausted_99": lambda n: {"active": -(-n // 100), "exhausted": n - -(-n // 100)},
}


async def decisions(router: ApiKeyRouter, count: int) -> tuple[list[float], list[float], list[float]]:
    """`count` decide+reserve+release cycles: (total, decide ask, reserve ask) seconds per cycle."""
    router_ref = router.router_ref()  # the refs the request path itself uses (cached, looked up per request)
    total, decide, reserve = [], [], []
    clock = time.perf_counter
    for i in range(count):
        rid = f"bench-{i}"
        t0 = clock()
        decision: RoutingDecision = await router_ref.ask(lambda r: Decide(rid, MODEL, OBJECTIVE, frozenset(), r))  # noqa: B023
        t1 = clock()
        key_id = decision.candidates[0].key_id
        ref: ActorRef[KeyCommand] = router.key_ref(key_id)
        lease = trio.current_time() + 600.0
        grant = await ref.ask(lambda r: Reserve(rid, MODEL, 64, Decimal(0), lease, r))  # noqa: B023
        ref.tell_nowait(Release(grant.reservation_id, "benchmark"))  # type: ignore[union-attr]
        t2 = clock()
        total.append(t2 - t0)
        decide.append(t1 - t0)
        reserve.append(t2 - t1)
    assert isinstance(grant, Granted), grant
    return total, decide, reserve


def pure_decides(actor: RouterActor, count: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for i in range(count):
        msg = Decide(f"pure-{i}", MODEL, OBJECTIVE, frozenset(), Reply())
        t0 = clock()
        actor.decide(msg)
        out.append(clock() - t0)
    return out


def hundred_policies() -> PolicyBook:
    policies = [
        Policy(f"c{i}", f"client:c{i}", "eligibility", Match(), PolicyEffect(deny_keys=(f"k{i}",))) for i in range(98)
    ]
    policies.append(
        Policy("no-reserved", "global", "eligibility", effect=PolicyEffect(deny_key_metadata={"tier": "r"}))
    )
    policies.append(Policy("mini", "global", "routing", Match(models=(MODEL,)), PolicyEffect(objective=OBJECTIVE)))
    return PolicyBook(policies, universe=Universe, wall_offset=lambda: 0.0)


def policy_decides(actor: RouterActor, book: PolicyBook, count: int) -> list[float]:
    """As `pure_decides`, with the request path's per-request policy step: resolve (cached), then decide."""
    out = []
    clock = time.perf_counter
    now = trio.current_time()
    for i in range(count):
        t0 = clock()
        eff = book.effective(MODEL, "bench", None, frozenset(), now)
        actor.decide(Decide(f"pol-{i}", MODEL, OBJECTIVE, frozenset(), Reply(), policy=eff, client="bench"))
        out.append(clock() - t0)
    return out


def scan_seconds(router: ApiKeyRouter, adapter: OpenAIAdapter, repeats: int) -> tuple[float, str]:
    price = adapter.prices.price(MODEL)
    assert price is not None
    prices = {MODEL: price}
    views = [view_of(snap, prices, False) for snap in router.board.keys.values()]
    now = trio.current_time()
    times = []
    best = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        top = rank(views, MODEL, OBJECTIVE, now, 3)
        times.append(time.perf_counter() - t0)
        best = top[0][0]
    return statistics.median(times), best


async def bench_one(n: int, state: str, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, float]:
    adapter = OpenAIAdapter(base_url=UNUSED_URL)
    async with ApiKeyRouter() as router:
        await router.register_provider(PROVIDER, adapter)
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            await router.register_key(f"sk-bench-{i:06d}", PROVIDER, key_id=f"k{i}")
        registered = time.perf_counter() - t0
        gc.collect()
        rss1 = rss_bytes()
        if "rss_per_key_kib" not in report and n == max(COUNTS):
            report["rss_per_key_kib"] = round((rss1 - rss0) / n / 1024, 2)
            report["register_us_per_key"] = round(registered / n * 1e6, 1)
            report["register_s"] = round(registered, 2)
        t0 = time.perf_counter()
        states = await drive_state(router, n, state)
        drive_s = time.perf_counter() - t0
        want = _EXPECTED[state](n)
        assert dict(states) == want, (state, dict(states), want)

        await decisions(router, 200)  # warm-up: drains the state changes, builds the objective's order
        totals, decides, reserves, means = [], [], [], []
        for _ in range(args.repeats):
            tot, dec, res = await decisions(router, args.iterations)
            totals.append(statistics.median(tot))
            decides.append(statistics.median(dec))
            reserves.append(statistics.median(res))
            means.append(statistics.fmean(tot))
        actor = router.router_actor()
        assert actor is not None
        book = hundred_policies()
        pure, with_policies = [], []
        for _ in range(args.repeats):  # interleaved rounds: the same machine load for both
            pure.append(statistics.median(pure_decides(actor, args.iterations)))
            with_policies.append(statistics.median(policy_decides(actor, book, args.iterations)))
        scan, scan_best = scan_seconds(router, adapter, max(3, min(50, 20_000 // n)))
        indexed_best = actor.decide(Decide("check", MODEL, OBJECTIVE, frozenset(), Reply())).candidates[0].key_id
        assert scan_best == indexed_best, (scan_best, indexed_best)  # the index ranks like the full scan
        t0 = time.perf_counter()
    stop_s = time.perf_counter() - t0
    return {
        "decision_us": statistics.median(totals) * 1e6,
        "decision_mean_us": statistics.median(means) * 1e6,
        "decide_ask_us": statistics.median(decides) * 1e6,
        "reserve_us": statistics.median(reserves) * 1e6,
        "pure_decide_us": statistics.median(pure) * 1e6,
        "policy_decide_us": statistics.median(with_policies) * 1e6,
        "scan_us": scan * 1e6,
        "register_s": registered,
        "drive_s": drive_s,
        "stop_s": stop_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer iterations, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.iterations = 3, 300
    # The router logs every registration and transition at info: keep them off stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report: dict[str, Any] = {}
    results: dict[tuple[int, str], dict[str, float]] = {}
    started = time.perf_counter()
    # 10,000 keys first, so the RSS growth is measured in a fresh process (no freed arenas to reuse).
    for n in sorted(COUNTS, reverse=True):
        for state in STATES:
            results[n, state] = trio.run(bench_one, n, state, args, report)
    header = (
        f"{'keys':>6} {'state':<15} {'decision µs':>11} {'(mean)':>7} {'Decide ask':>10} {'Reserve':>8}"
        f" {'decide()':>9} {'decide()+100 pol.':>17} {'scan µs':>9} {'register s':>10} {'stop s':>7}"
    )
    print(header)
    for n in COUNTS:
        for state in STATES:
            r = results[n, state]
            print(
                f"{n:>6} {state:<15} {r['decision_us']:>11.2f} {r['decision_mean_us']:>7.2f}"
                f" {r['decide_ask_us']:>10.2f} {r['reserve_us']:>8.2f} {r['pure_decide_us']:>9.2f}"
                f" {r['policy_decide_us']:>17.2f}"
                f" {r['scan_us']:>9.1f} {r['register_s']:>10.2f} {r['stop_s']:>7.2f}"
            )
    print(
        f"registering {max(COUNTS)} keys: {report['register_s']} s ({report['register_us_per_key']} µs/key);"
        f" RSS per key actor: {report['rss_per_key_kib']} KiB; total {time.perf_counter() - started:.0f} s"
    )

    def table(field: str, digits: int) -> dict[str, dict[str, float]]:
        return {str(n): {s: round(results[n, s][field], digits) for s in STATES} for n in COUNTS}

    healthy = results[max(COUNTS), "healthy"]["decision_us"] / results[min(COUNTS), "healthy"]["decision_us"]
    print(
        json.dumps(
            {
                "decision_us": table("decision_us", 2),
                "ratio_10k_to_10": round(healthy, 2),
                "pure_decide_us": table("pure_decide_us", 2),
                "policy_decide_us": table("policy_decide_us", 2),
                "policy_ratio": {
                    str(n): {
                        s: round(results[n, s]["policy_decide_us"] / results[n, s]["pure_decide_us"], 2) for s in STATES
                    }
                    for n in COUNTS
                },
                "scan_us": table("scan_us", 1),
                "rss_per_key_kib": report["rss_per_key_kib"],
                "register_us_per_key": report["register_us_per_key"],
                "objective": OBJECTIVE,
                "repeats": args.repeats,
                "iterations": args.iterations,
            }
        )
    )


if __name__ == "__main__":
    main()
