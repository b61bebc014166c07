"""Budgets: scenarios, and the never-overspent property under random interleavings."""

from __future__ import annotations

import math
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import budget
from apikeyrouter.domain.budget import (
    BudgetOverrun,
    BudgetRefused,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    BudgetSpec,
    HoldExpired,
    LateCharged,
)

D = Decimal
FOREVER = math.inf


def test_reserve_settle_release_and_refusal_name_the_budget() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1.00")), BudgetSpec("client:acme", D("0.30"))], now=0.0)
    ledger, events = budget.reserve(ledger, "r1", ["global", "client:acme", "key:none"], D("0.20"), 1.0, until=FOREVER)
    assert events == [BudgetReserved("r1", D("0.20"), ("global", "client:acme"), 1.0)]
    before = ledger
    ledger, events = budget.reserve(ledger, "r2", ["global", "client:acme"], D("0.11"), 2.0, until=FOREVER)
    assert ledger == before
    refused = budget.refusal(events)
    assert refused == BudgetRefused("r2", "client:acme", D("0.30"), D(0), D("0.20"), D("0.11"), 2.0)
    assert "0.10 available" in refused.message
    ledger, events = budget.settle(ledger, "r1", D("0.05"), 3.0)
    assert events == [BudgetSettled("r1", D("0.20"), D("0.05"), 3.0)]
    acme = budget.status(ledger, "client:acme", 3.0)
    assert acme is not None and acme.spent == D("0.05") and acme.reserved == 0 and acme.available == D("0.25")
    ledger, events = budget.reserve(ledger, "r2", ["global", "client:acme"], D("0.11"), 4.0, until=FOREVER)
    ledger, events = budget.release(ledger, "r2", 5.0)
    assert events == [BudgetReleased("r2", D("0.11"), 5.0)]


def test_settle_and_release_are_idempotent() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "r1", ["global"], D("0.5"), 0.0, until=FOREVER)
    assert budget.reserve(ledger, "r1", ["global"], D("0.5"), 0.0, until=FOREVER) == (ledger, [])
    ledger, _ = budget.settle(ledger, "r1", D("0.4"), 1.0)
    assert budget.settle(ledger, "r1", D("0.4"), 1.0) == (ledger, [])
    assert budget.release(ledger, "r1", 1.0) == (ledger, [])
    status = budget.status(ledger, "global", 1.0)
    assert status is not None and status.spent == D("0.4")


def test_periods_reset_spend_but_keep_live_holds() -> None:
    ledger = budget.new_ledger([BudgetSpec("daily", D("1"), period_s=100.0)], now=0.0)
    ledger, _ = budget.reserve(ledger, "a", ["daily"], D("0.6"), 10.0, until=FOREVER)
    ledger, _ = budget.settle(ledger, "a", D("0.6"), 20.0)
    ledger, _ = budget.reserve(ledger, "b", ["daily"], D("0.4"), 90.0, until=FOREVER)
    ledger, events = budget.reserve(ledger, "c", ["daily"], D("0.1"), 99.0, until=FOREVER)
    assert budget.refusal(events) is not None
    ledger, events = budget.reserve(ledger, "c", ["daily"], D("0.6"), 100.0, until=FOREVER)
    assert budget.refusal(events) is None
    status = budget.status(ledger, "daily", 100.0)
    assert status is not None and (status.spent, status.reserved, status.period) == (D(0), D("1.0"), 1)


def test_an_overrun_is_recorded_and_reported() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "r", ["global"], D("0.1"), 0.0, until=FOREVER)
    ledger, events = budget.settle(ledger, "r", D("0.15"), 1.0)
    assert events[-1] == BudgetOverrun("r", "global", D("0.05"), 1.0)
    status = budget.status(ledger, "global", 1.0)
    assert status is not None and status.spent == D("0.15")


def test_a_hold_expires_at_its_lease_and_frees_what_it_held() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1")), BudgetSpec("key:k", D("0.5"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "lost", ["global", "key:k"], D("0.4"), 0.0, until=30.0)
    ledger, _ = budget.reserve(ledger, "live", ["global"], D("0.1"), 0.0, until=60.0)
    assert budget.next_expiry(ledger) == 30.0
    assert budget.expire(ledger, 29.999) == (ledger, [])
    ledger, events = budget.expire(ledger, 30.0)
    assert events == [HoldExpired("lost", ("global", "key:k"), D("0.4"), 30.0)]
    assert set(ledger.holds) == {"live"} and budget.next_expiry(ledger) == 60.0
    glob, key = budget.status(ledger, "global", 30.0), budget.status(ledger, "key:k", 30.0)
    assert glob is not None and (glob.spent, glob.reserved) == (0, D("0.1"))
    assert key is not None and (key.spent, key.reserved) == (0, 0)
    assert budget.expire(ledger, 31.0) == (ledger, [])  # once


def test_a_late_charge_for_an_expired_hold_still_charges_the_budgets_it_named() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1")), BudgetSpec("key:k", D("0.5"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "slow", ["global", "key:k"], D("0.4"), 0.0, until=30.0)
    ledger, _ = budget.expire(ledger, 30.0)
    ledger, _ = budget.reserve(ledger, "next", ["key:k"], D("0.5"), 31.0, until=90.0)  # the freed room, re-held
    ledger, events = budget.settle(ledger, "slow", D("0.3"), 40.0)
    assert events == [LateCharged("slow", ("global", "key:k"), D("0.3"), 40.0)]
    key = budget.status(ledger, "key:k", 40.0)
    assert key is not None and (key.spent, key.reserved, key.available) == (D("0.3"), D("0.5"), D("-0.3"))
    assert budget.refusal(budget.reserve(ledger, "more", ["key:k"], D(0), 41.0, until=90.0)[1]) is not None
    assert budget.settle(ledger, "slow", D("0.3"), 41.0) == (ledger, [])  # charged once
    glob = budget.status(ledger, "global", 41.0)
    assert glob is not None and glob.spent == D("0.3")


def test_a_late_free_for_an_expired_hold_changes_nothing_and_expired_holds_are_forgotten_in_time() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "a", ["global"], D("0.4"), 0.0, until=10.0)
    ledger, _ = budget.reserve(ledger, "b", ["global"], D("0.4"), 0.0, until=10.0)
    ledger, _ = budget.expire(ledger, 10.0)
    after, events = budget.release(ledger, "a", 11.0)
    assert events == [] and after.budgets == ledger.budgets
    assert budget.settle(after, "a", D("0.1"), 12.0)[1] == []  # a free then a charge: the free won
    later, _ = budget.expire(ledger, 10.0 + budget.LATE_CHARGE_S)
    assert budget.settle(later, "b", D("0.1"), 10.0 + budget.LATE_CHARGE_S)[1] == []


_ids = [f"r{i}" for i in range(8)]
_scopes = ["global", "provider:p", "key:k", "client:c"]
_op: st.SearchStrategy[tuple[str, str, list[str], int]] = st.one_of(
    st.tuples(
        st.just("reserve"), st.sampled_from(_ids), st.lists(st.sampled_from(_scopes), max_size=4), st.integers(0, 40)
    ),
    st.tuples(st.just("settle"), st.sampled_from(_ids), st.just([]), st.integers(0, 100)),
    st.tuples(st.just("release"), st.sampled_from(_ids), st.just([]), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.just([]), st.integers(1, 60)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=80))
def test_never_overspent_under_any_interleaving(ops: list[tuple[str, str, list[str], int]]) -> None:
    specs = [
        BudgetSpec("global", D("1.00")),
        BudgetSpec("provider:p", D("0.60"), period_s=100.0),
        BudgetSpec("key:k", D("0.35")),
        BudgetSpec("client:c", D("0.50"), period_s=30.0),
    ]
    ledger, now = budget.new_ledger(specs, now=0.0), 0.0
    amounts: dict[str, Decimal] = {}
    charged: dict[tuple[str, int], Decimal] = {}  # independent record: (budget, period) -> money charged
    for op, hold, scopes, n in ops:
        if op == "wait":
            now += n
            continue
        if op == "reserve":
            ledger, events = budget.reserve(ledger, hold, scopes, D(n) / 100, now, until=FOREVER)
            if any(isinstance(e, BudgetReserved) for e in events):
                amounts[hold] = D(n) / 100
        else:
            held = ledger.holds.get(hold)
            if op == "settle":
                # Actual never exceeds the worst case: a fraction of it.
                actual = (amounts.get(hold, D(0)) * n / 100).quantize(D("0.0001"))
                ledger, events = budget.settle(ledger, hold, actual, now)
                if held is not None:
                    for bid in held.budgets:
                        b = budget.status(ledger, bid, now)
                        assert b is not None
                        charged[(bid, b.period)] = charged.get((bid, b.period), D(0)) + actual
            else:
                ledger, events = budget.release(ledger, hold, now)
            if held is None:
                assert events == []
        for spec in specs:
            b = budget.status(ledger, spec.id, now)
            assert b is not None
            assert b.spent + b.reserved <= spec.limit
            assert b.reserved == sum((h.amount for h in ledger.holds.values() if spec.id in h.budgets), D(0))
    for (bid, _period), money in charged.items():
        assert money <= next(s.limit for s in specs if s.id == bid)
    for hold in list(ledger.holds):
        ledger, _ = budget.release(ledger, hold, now)
    assert all(b.reserved == 0 for b in ledger.budgets.values())


_lease_op: st.SearchStrategy[tuple[str, str, int, int]] = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(_ids[:4]), st.integers(0, 40), st.integers(1, 60)),
    st.tuples(st.just("settle"), st.sampled_from(_ids[:4]), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("release"), st.sampled_from(_ids[:4]), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.integers(1, 60), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lease_op, max_size=60))
def test_with_leases_every_charge_is_counted_and_reserved_is_what_live_holds_hold(
    ops: list[tuple[str, str, int, int]],
) -> None:
    # As the budget actor does: expire before every step. A charge may come after its lease.
    specs = [BudgetSpec("global", D("1.00")), BudgetSpec("key:k", D("0.35"))]
    ledger, now = budget.new_ledger(specs, now=0.0), 0.0
    amounts: dict[str, Decimal] = {}
    charged = {s.id: D(0) for s in specs}
    late = D(0)
    for op, hold, n, lease in ops:
        if op == "wait":
            now += n
            continue
        ledger, _ = budget.expire(ledger, now)
        if op == "reserve":
            ledger, events = budget.reserve(ledger, hold, ["global", "key:k"], D(n) / 100, now, until=now + lease)
            if any(isinstance(e, BudgetReserved) for e in events):
                amounts[hold] = D(n) / 100
        elif op == "settle":
            actual = (amounts.get(hold, D(0)) * n / 100).quantize(D("0.0001"))
            ledger, events = budget.settle(ledger, hold, actual, now)
            for ev in events:
                if isinstance(ev, BudgetSettled | LateCharged):
                    for bid in ("global", "key:k"):
                        charged[bid] += actual
                late += actual if isinstance(ev, LateCharged) else 0
        else:
            ledger, _ = budget.release(ledger, hold, now)
        for spec in specs:
            b = budget.status(ledger, spec.id, now)
            assert b is not None and b.spent == charged[spec.id]
            assert b.reserved == sum((h.amount for h in ledger.holds.values() if h.until > now), D(0))
            assert b.spent + b.reserved <= spec.limit + late
