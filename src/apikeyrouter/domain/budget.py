"""Hard money budgets that cannot be overspent, however many requests run at once.

A `Ledger` holds budgets (any scope: "global", "provider:openai", "key:k1", "client:acme" — ids are
the caller's) and the live holds against them. A request reserves its worst-case cost against every
budget that applies, in one step that either holds on all of them or changes nothing:

    reserve(ledger, hold_id, budget_ids, worst_case, now)
        refused if, for any budget, spent + reserved + worst_case > limit
    settle(ledger, hold_id, actual, now)     reserved -= worst_case; spent += actual
    release(ledger, hold_id, now)            reserved -= worst_case

Invariant: `spent + reserved <= limit` for every budget at every step, provided `actual <= worst_case`
(which `cost.worst_case` guarantees when token counts hold). Because the check and the hold are one
pure step on one value — and the owning actor applies steps one at a time — no interleaving of
requests can overspend. If a provider ever bills more than the worst case, the real figure is still
recorded (the ledger never lies about money) and a `BudgetOverrun` event says so.

Idempotency: hold ids are the caller's (request id + attempt). `reserve` with an id already held,
and `settle`/`release` of an id not held (already settled, released, or never reserved), change
nothing and return no events — so a retried message cannot double-charge or double-free.

Periods: a budget with `period_s` resets its `spent` at every multiple of `period_s` after the
ledger's `origin` (lazily, when next touched). Holds made in an earlier period stay reserved in the
new one and are charged to the period in which they settle: conservative, never overspending.

Budget ids named in a reservation that have no budget configured are skipped (no budget = no
limit). Unlike quota windows (`quota.py`), the ledger is plain Decimal arithmetic: exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal

import attrs

__all__ = [
    "BudgetEvent",
    "BudgetOverrun",
    "BudgetRefused",
    "BudgetReleased",
    "BudgetReserved",
    "BudgetSettled",
    "BudgetSpec",
    "BudgetStatus",
    "Ledger",
    "new_ledger",
    "refusal",
    "release",
    "remove_budget",
    "reserve",
    "set_budget",
    "settle",
    "status",
]

_ZERO = Decimal(0)


@attrs.frozen
class BudgetSpec:
    id: str
    limit: Decimal
    period_s: float | None = None  # None: the budget never resets

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.limit, Decimal) or self.limit < 0:
            raise ValueError(f"budget {self.id!r}: limit must be a Decimal >= 0, got {self.limit!r}")
        if self.period_s is not None and self.period_s <= 0:
            raise ValueError(f"budget {self.id!r}: period_s must be > 0")


@attrs.frozen
class BudgetStatus:
    spec: BudgetSpec
    spent: Decimal = _ZERO  # in the current period
    reserved: Decimal = _ZERO  # held by live reservations
    period: int = 0  # index of the current period (0 for budgets without one)

    @property
    def available(self) -> Decimal:
        return self.spec.limit - self.spent - self.reserved


@attrs.frozen
class _Hold:
    amount: Decimal
    budgets: tuple[str, ...]


@attrs.frozen
class Ledger:
    origin: float
    budgets: Mapping[str, BudgetStatus] = attrs.field(factory=dict)
    holds: Mapping[str, _Hold] = attrs.field(factory=dict)


@attrs.frozen
class BudgetReserved:
    hold_id: str
    amount: Decimal
    budgets: tuple[str, ...]
    at: float


@attrs.frozen
class BudgetRefused:
    hold_id: str
    budget: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    requested: Decimal
    at: float

    @property
    def message(self) -> str:
        return (
            f"budget {self.budget}: {self.requested} requested, {self.limit - self.spent - self.reserved} available "
            f"(limit {self.limit}, spent {self.spent}, reserved {self.reserved})"
        )


@attrs.frozen
class BudgetSettled:
    hold_id: str
    reserved: Decimal
    actual: Decimal
    at: float


@attrs.frozen
class BudgetReleased:
    hold_id: str
    amount: Decimal
    at: float


@attrs.frozen
class BudgetOverrun:
    """A settle billed more than its reserved worst case: the estimate was not an upper bound."""

    hold_id: str
    budget: str
    over_by: Decimal
    at: float


BudgetEvent = BudgetReserved | BudgetRefused | BudgetSettled | BudgetReleased | BudgetOverrun


def new_ledger(specs: Iterable[BudgetSpec], now: float) -> Ledger:
    ledger = Ledger(origin=now)
    for spec in specs:
        ledger = set_budget(ledger, spec, now)
    return ledger


def refusal(events: list[BudgetEvent]) -> BudgetRefused | None:
    for event in events:
        if isinstance(event, BudgetRefused):
            return event
    return None


def _period(ledger: Ledger, spec: BudgetSpec, now: float) -> int:
    if spec.period_s is None:
        return 0
    return max(0, math.floor((now - ledger.origin) / spec.period_s))


def _current(ledger: Ledger, b: BudgetStatus, now: float) -> BudgetStatus:
    period = _period(ledger, b.spec, now)
    return attrs.evolve(b, spent=_ZERO, period=period) if period > b.period else b


def status(ledger: Ledger, budget_id: str, now: float) -> BudgetStatus | None:
    """A budget as of `now` (its period rolled if due), or None if there is no such budget."""
    b = ledger.budgets.get(budget_id)
    return None if b is None else _current(ledger, b, now)


def set_budget(ledger: Ledger, spec: BudgetSpec, now: float) -> Ledger:
    """Add a budget or change its limit/period, keeping what is spent and reserved against it.

    Lowering a limit below what is already spent and reserved refuses new holds until enough settle.
    """
    old = ledger.budgets.get(spec.id)
    if old is None:
        new = BudgetStatus(spec=spec, period=_period(ledger, spec, now))
    else:
        new = _current(ledger, attrs.evolve(old, spec=spec), now)
    return attrs.evolve(ledger, budgets={**ledger.budgets, spec.id: new})


def remove_budget(ledger: Ledger, budget_id: str) -> Ledger:
    """Drop a budget; holds that named it simply stop counting against it."""
    if budget_id not in ledger.budgets:
        return ledger
    return attrs.evolve(ledger, budgets={k: v for k, v in ledger.budgets.items() if k != budget_id})


def reserve(
    ledger: Ledger, hold_id: str, budget_ids: Iterable[str], worst_case: Decimal, now: float
) -> tuple[Ledger, list[BudgetEvent]]:
    """Hold `worst_case` against every named budget, or refuse (ledger unchanged, one `BudgetRefused`)."""
    if not isinstance(worst_case, Decimal) or worst_case < 0:
        raise ValueError(f"worst_case must be a Decimal >= 0, got {worst_case!r}")
    if hold_id in ledger.holds:
        return ledger, []
    ids = tuple(dict.fromkeys(b for b in budget_ids if b in ledger.budgets))
    updated: dict[str, BudgetStatus] = {}
    for bid in ids:
        b = _current(ledger, ledger.budgets[bid], now)
        if b.spent + b.reserved + worst_case > b.spec.limit:
            return ledger, [BudgetRefused(hold_id, bid, b.spec.limit, b.spent, b.reserved, worst_case, now)]
        updated[bid] = attrs.evolve(b, reserved=b.reserved + worst_case)
    new = attrs.evolve(
        ledger,
        budgets={**ledger.budgets, **updated},
        holds={**ledger.holds, hold_id: _Hold(worst_case, ids)},
    )
    return new, [BudgetReserved(hold_id, worst_case, ids, now)]


def _finish(ledger: Ledger, hold_id: str, actual: Decimal | None, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    hold = ledger.holds.get(hold_id)
    if hold is None:
        return ledger, []
    events: list[BudgetEvent] = []
    updated: dict[str, BudgetStatus] = {}
    for bid in hold.budgets:
        if bid not in ledger.budgets:
            continue
        b = _current(ledger, ledger.budgets[bid], now)
        spent = b.spent if actual is None else b.spent + actual
        # Clamped: a budget removed and re-added while this hold was live never counted it.
        updated[bid] = attrs.evolve(b, reserved=max(_ZERO, b.reserved - hold.amount), spent=spent)
        if actual is not None and actual > hold.amount:
            events.append(BudgetOverrun(hold_id, bid, actual - hold.amount, now))
    holds = {k: v for k, v in ledger.holds.items() if k != hold_id}
    new = attrs.evolve(ledger, budgets={**ledger.budgets, **updated}, holds=holds)
    done: BudgetEvent = (
        BudgetReleased(hold_id, hold.amount, now)
        if actual is None
        else BudgetSettled(hold_id, hold.amount, actual, now)
    )
    return new, [done, *events]


def settle(ledger: Ledger, hold_id: str, actual: Decimal, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    """Charge the actual cost and free the hold. Idempotent: an unknown hold id changes nothing."""
    if not isinstance(actual, Decimal) or actual < 0:
        raise ValueError(f"actual must be a Decimal >= 0, got {actual!r}")
    return _finish(ledger, hold_id, actual, now)


def release(ledger: Ledger, hold_id: str, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    """Free the hold without charging (the call failed before costing anything, or was cancelled)."""
    return _finish(ledger, hold_id, None, now)
