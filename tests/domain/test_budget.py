"""Budgets: scenarios, and the never-overspent property under random interleavings."""

from __future__ import annotations

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
)

D = Decimal


def test_reserve_settle_release_and_refusal_name_the_budget() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1.00")), BudgetSpec("client:acme", D("0.30"))], now=0.0)
    ledger, events = budget.reserve(ledger, "r1", ["global", "client:acme", "key:none"], D("0.20"), 1.0)
    assert events == [BudgetReserved("r1", D("0.20"), ("global", "client:acme"), 1.0)]
    before = ledger
    ledger, events = budget.reserve(ledger, "r2", ["global", "client:acme"], D("0.11"), 2.0)
    assert ledger == before
    refused = budget.refusal(events)
    assert refused == BudgetRefused("r2", "client:acme", D("0.30"), D(0), D("0.20"), D("0.11"), 2.0)
    assert "0.10 available" in refused.message
    ledger, events = budget.settle(ledger, "r1", D("0.05"), 3.0)
    assert events == [BudgetSettled("r1", D("0.20"), D("0.05"), 3.0)]
    acme = budget.status(ledger, "client:acme", 3.0)
    assert acme is not None and acme.spent == D("0.05") and acme.reserved == 0 and acme.available == D("0.25")
    ledger, events = budget.reserve(ledger, "r2", ["global", "client:acme"], D("0.11"), 4.0)
    ledger, events = budget.release(ledger, "r2", 5.0)
    assert events == [BudgetReleased("r2", D("0.11"), 5.0)]


def test_settle_and_release_are_idempotent() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "r1", ["global"], D("0.5"), 0.0)
    assert budget.reserve(ledger, "r1", ["global"], D("0.5"), 0.0) == (ledger, [])
    ledger, _ = budget.settle(ledger, "r1", D("0.4"), 1.0)
    assert budget.settle(ledger, "r1", D("0.4"), 1.0) == (ledger, [])
    assert budget.release(ledger, "r1", 1.0) == (ledger, [])
    status = budget.status(ledger, "global", 1.0)
    assert status is not None and status.spent == D("0.4")


def test_periods_reset_spend_but_keep_live_holds() -> None:
    ledger = budget.new_ledger([BudgetSpec("daily", D("1"), period_s=100.0)], now=0.0)
    ledger, _ = budget.reserve(ledger, "a", ["daily"], D("0.6"), 10.0)
    ledger, _ = budget.settle(ledger, "a", D("0.6"), 20.0)
    ledger, _ = budget.reserve(ledger, "b", ["daily"], D("0.4"), 90.0)
    ledger, events = budget.reserve(ledger, "c", ["daily"], D("0.1"), 99.0)
    assert budget.refusal(events) is not None
    ledger, events = budget.reserve(ledger, "c", ["daily"], D("0.6"), 100.0)
    assert budget.refusal(events) is None
    status = budget.status(ledger, "daily", 100.0)
    assert status is not None and (status.spent, status.reserved, status.period) == (D(0), D("1.0"), 1)


def test_an_overrun_is_recorded_and_reported() -> None:
    ledger = budget.new_ledger([BudgetSpec("global", D("1"))], now=0.0)
    ledger, _ = budget.reserve(ledger, "r", ["global"], D("0.1"), 0.0)
    ledger, events = budget.settle(ledger, "r", D("0.15"), 1.0)
    assert events[-1] == BudgetOverrun("r", "global", D("0.05"), 1.0)
    status = budget.status(ledger, "global", 1.0)
    assert status is not None and status.spent == D("0.15")


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
            ledger, events = budget.reserve(ledger, hold, scopes, D(n) / 100, now)
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
