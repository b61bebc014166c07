"""Hard money budgets that cannot be overspent, however many requests run at once.

A `Ledger` holds budgets (any scope: "global", "provider:openai", "key:k1", "client:acme" — ids are
the caller's) and the live holds against them. A request reserves its worst-case cost against every
budget that applies, in one step that either holds on all of them or changes nothing:

    reserve(ledger, hold_id, budget_ids, worst_case, now, until=lease_end)
        refused if, for any budget, spent + reserved + worst_case > limit
    settle(ledger, hold_id, actual, now)     reserved -= worst_case; spent += actual
    release(ledger, hold_id, now)            reserved -= worst_case
    expire(ledger, now)                      every hold whose lease ended: reserved -= worst_case

Invariant: `spent + reserved <= limit` for every budget at every step, provided `actual <= worst_case`
(which `cost.worst_case` guarantees when token counts hold) and no charge comes after its hold's lease
(see Leases). Because the check and the hold are one
pure step on one value — and the owning actor applies steps one at a time — no interleaving of
requests can overspend. If a provider ever bills more than the worst case, the real figure is still
recorded (the ledger never lies about money) and a `BudgetOverrun` event says so.

Idempotency: hold ids are the caller's (request id + attempt). `reserve` with an id already held,
and `settle`/`release` of an id not held (already settled, released, or never reserved), change
nothing and return no events — so a retried message cannot double-charge or double-free.

Leases: every hold has one (`until`, from the caller's deadline), because its settlement can be lost —
the budget actor restarting when the charge or free is sent, or crashing on the very message. Without a
lease such a hold would shrink a hard budget for good. `expire` frees every hold whose lease has ended
(a `HoldExpired` each: it means a settlement was lost) and keeps a note of what the hold named, for
`LATE_CHARGE_S`. The owner applies it before every step and when the earliest lease (`next_expiry`)
ends.

A late charge — `settle` of a hold that has expired — still charges `actual` to the budgets the hold
named (those still configured), and returns a `LateCharged`: spend is never lost, the ledger never
lies about money. Its reserved amount was given back at expiry and may have been held again since, so
a late charge can take `spent + reserved` past the limit: the budget then refuses new holds until
enough settles or its period resets. That is the rule because the money was spent upstream: a budget
caps real spend, so dropping the charge would let later requests spend the same money again, while
counting it only refuses new work. A late charge is charged once (the
note is dropped); a late `release` just drops the note. A settlement later than `LATE_CHARGE_S` after
the lease (or once `_MAX_EXPIRED` newer holds expired) is dropped, as for any unknown hold id.

Periods: a budget with `period_s` resets its `spent` at every multiple of `period_s` after the
ledger's `origin`; one with a `calendar` period (domain/period.py) at the start of each calendar hour,
day, week or month, the wall time being `now + ledger.wall_offset` (lazily, when next touched). Holds
made in an earlier period stay reserved in the new one and are charged to the period in which they
settle: conservative, never overspending.

Modes: a `hard` budget refuses a hold that would take it past its limit; a `soft` one holds it anyway
and returns a `BudgetSoftExceeded` with the hold (serve, but say so). The invariant above is for hard
budgets; a soft one records what was spent, however far past its limit.

Templates: a budget id that is not configured but starts with a template's prefix ("client:") gets
a budget of its own from the template, in the same step that holds on it, so the first burst of a
client never seen before meets the default budget exactly like every later one.

Expected spend: a hold may carry what reconcile learned for its (provider, model) when it was placed
(its ratio, the price and `max_tokens`), references only. `expected_reserved` reads them when someone
asks — a soft budget's projection (`forecast(..., reserved=...)`) rests on what the holds in flight are
expected to cost; a hard budget's on the worst case it holds, which is also all it ever enforces.

Budget ids named in a reservation that have no budget configured are skipped (no budget = no
limit). Unlike quota windows (`quota.py`), the ledger is plain Decimal arithmetic: exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Literal

import attrs

from apikeyrouter.domain import reconcile
from apikeyrouter.domain.cost import PER_MILLION, ModelPrice
from apikeyrouter.domain.period import CalendarPeriod, bounds
from apikeyrouter.domain.rates import Rates

__all__ = [
    "LATE_CHARGE_S",
    "BudgetEvent",
    "BudgetOverrun",
    "BudgetRefused",
    "BudgetReleased",
    "BudgetReserved",
    "BudgetSettled",
    "BudgetSoftExceeded",
    "BudgetSpec",
    "BudgetStatus",
    "Forecast",
    "HoldExpired",
    "LateCharged",
    "Ledger",
    "expected_reserved",
    "expire",
    "forecast",
    "new_ledger",
    "next_expiry",
    "period_bounds",
    "reconfigure",
    "refusal",
    "release",
    "remove_budget",
    "reserve",
    "set_budget",
    "set_templates",
    "settle",
    "status",
]

_ZERO = Decimal(0)
LATE_CHARGE_S = 86_400.0  # how long after its lease an expired hold can still be charged
_MAX_EXPIRED = 10_000  # notes of expired holds kept at most (the oldest go first)


@attrs.frozen
class BudgetSpec:
    id: str
    limit: Decimal
    period_s: float | None = None  # None (and no calendar): the budget never resets
    calendar: CalendarPeriod | None = None  # resets at each calendar hour/day/week/month instead
    mode: Literal["hard", "soft"] = "hard"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.limit, Decimal) or self.limit < 0:
            raise ValueError(f"budget {self.id!r}: limit must be a Decimal >= 0, got {self.limit!r}")
        if self.period_s is not None and self.period_s <= 0:
            raise ValueError(f"budget {self.id!r}: period_s must be > 0")
        if self.period_s is not None and self.calendar is not None:
            raise ValueError(f"budget {self.id!r}: set period_s or calendar, not both")
        if self.mode not in ("hard", "soft"):
            raise ValueError(f"budget {self.id!r}: mode must be 'hard' or 'soft', got {self.mode!r}")


@attrs.frozen
class BudgetStatus:
    spec: BudgetSpec
    spent: Decimal = _ZERO  # in the current period
    reserved: Decimal = _ZERO  # held by live reservations
    period: int = 0  # the current period: its index, or (calendar) its start in wall seconds; 0 without one
    charges: int = 0  # settlements charged in the current period (how much a burn rate rests on)

    @property
    def available(self) -> Decimal:
        return self.spec.limit - self.spent - self.reserved


@attrs.frozen
class _Hold:
    amount: Decimal
    budgets: tuple[str, ...]
    until: float  # the lease: freed by `expire` from then on
    ratio: reconcile.Ratio | None = None  # learned for its (provider, model) when placed: None, nothing yet
    price: ModelPrice | None = None  # with `max_output`: the output part of `amount`
    max_output: int = 0


@attrs.frozen
class _Expired:
    """A note of a hold that expired, so a late charge still reaches the budgets it named."""

    budgets: tuple[str, ...]
    at: float


@attrs.frozen
class Ledger:
    origin: float
    budgets: Mapping[str, BudgetStatus] = attrs.field(factory=dict)
    holds: Mapping[str, _Hold] = attrs.field(factory=dict)
    expired: Mapping[str, _Expired] = attrs.field(factory=dict)  # in expiry order
    wall_offset: float = 0.0  # wall seconds minus trio seconds: where calendar periods are cut
    templates: Mapping[str, BudgetSpec] = attrs.field(factory=dict)  # id prefix -> the budget it gets
    # The clients' and teams' rpm/tpm windows (domain/rates.py), kept by the budget actor beside the money
    # and stored with it, so a restart does not hand a client its minute again. No rule here reads them.
    rates: Rates = attrs.field(factory=Rates)


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
class BudgetSoftExceeded:
    """A hold took a soft budget past its limit: held anyway (soft budgets serve), and said."""

    hold_id: str
    budget: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    requested: Decimal
    at: float


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


@attrs.frozen
class HoldExpired:
    """A hold's lease ended before it was settled: its amount is free again (its settlement was lost)."""

    hold_id: str
    budgets: tuple[str, ...]
    amount: Decimal
    at: float


@attrs.frozen
class LateCharged:
    """A charge for a hold that had expired: `actual` charged to the budgets the hold named."""

    hold_id: str
    budgets: tuple[str, ...]
    actual: Decimal
    at: float


BudgetEvent = (
    BudgetReserved
    | BudgetRefused
    | BudgetSoftExceeded
    | BudgetSettled
    | BudgetReleased
    | BudgetOverrun
    | HoldExpired
    | LateCharged
)


def new_ledger(specs: Iterable[BudgetSpec], now: float, *, wall_offset: float = 0.0) -> Ledger:
    ledger = Ledger(origin=now, wall_offset=wall_offset)
    for spec in specs:
        ledger = set_budget(ledger, spec, now)
    return ledger


def refusal(events: list[BudgetEvent]) -> BudgetRefused | None:
    for event in events:
        if isinstance(event, BudgetRefused):
            return event
    return None


def _period(ledger: Ledger, spec: BudgetSpec, now: float) -> int:
    if spec.calendar is not None:
        return int(bounds(spec.calendar, now + ledger.wall_offset)[0])
    if spec.period_s is None:
        return 0
    return max(0, math.floor((now - ledger.origin) / spec.period_s))


def period_bounds(ledger: Ledger, spec: BudgetSpec, now: float) -> tuple[float, float] | None:
    """The current period of `spec` as trio times [start, end), or None for a budget that never resets."""
    if spec.calendar is not None:
        start, end = bounds(spec.calendar, now + ledger.wall_offset)
        return start - ledger.wall_offset, end - ledger.wall_offset
    if spec.period_s is None:
        return None
    index = _period(ledger, spec, now)
    return ledger.origin + index * spec.period_s, ledger.origin + (index + 1) * spec.period_s


def _current(ledger: Ledger, b: BudgetStatus, now: float) -> BudgetStatus:
    period = _period(ledger, b.spec, now)
    return attrs.evolve(b, spent=_ZERO, period=period, charges=0) if period > b.period else b


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


def set_templates(ledger: Ledger, templates: Iterable[BudgetSpec]) -> Ledger:
    """The budgets ids starting with each template's id (its prefix, "client:") get when first named.
    Budgets already made from a template keep their limits (`reconfigure` sets them anew)."""
    return attrs.evolve(ledger, templates={t.id: t for t in templates})


def reconfigure(
    ledger: Ledger,
    specs: Iterable[BudgetSpec],
    templates: Iterable[BudgetSpec],
    now: float,
    *,
    later: Callable[[str], bool] | None = None,
) -> Ledger:
    """The ledger under a (new) configuration, keeping what is spent and reserved: `specs` set, budgets
    made from a template given that template's limit, period and mode, every other budget dropped (a
    budget no longer configured limits nothing) but those `later` says will be set again soon. For a
    reload, and for a ledger restored from a store, which may have been written under another configuration."""
    specs = tuple(specs)
    ledger = set_templates(ledger, templates)
    keep = {sp.id for sp in specs}
    for bid in [b for b in ledger.budgets if b not in keep and not (later is not None and later(b))]:
        spec = _from_template(ledger, bid)
        ledger = remove_budget(ledger, bid) if spec is None else set_budget(ledger, spec, now)
    for spec in specs:
        ledger = set_budget(ledger, spec, now)
    return ledger


def _from_template(ledger: Ledger, budget_id: str) -> BudgetSpec | None:
    for prefix, template in ledger.templates.items():
        if budget_id.startswith(prefix) and len(budget_id) > len(prefix):
            return attrs.evolve(template, id=budget_id)
    return None


def remove_budget(ledger: Ledger, budget_id: str) -> Ledger:
    """Drop a budget; holds that named it simply stop counting against it."""
    if budget_id not in ledger.budgets:
        return ledger
    return attrs.evolve(ledger, budgets={k: v for k, v in ledger.budgets.items() if k != budget_id})


def reserve(
    ledger: Ledger,
    hold_id: str,
    budget_ids: Iterable[str],
    worst_case: Decimal,
    now: float,
    *,
    until: float,
    ratio: reconcile.Ratio | None = None,
    price: ModelPrice | None = None,
    max_output: int = 0,
) -> tuple[Ledger, list[BudgetEvent]]:
    """Hold `worst_case` against every named budget until `until` at the latest, or refuse (ledger
    unchanged, one `BudgetRefused`). `ratio`, `price`, `max_output`: what its expected cost is read from."""
    if not isinstance(worst_case, Decimal) or worst_case < 0:
        raise ValueError(f"worst_case must be a Decimal >= 0, got {worst_case!r}")
    if hold_id in ledger.holds:
        return ledger, []
    ids: list[str] = []
    updated: dict[str, BudgetStatus] = {}
    soft: list[BudgetEvent] = []
    for bid in dict.fromkeys(budget_ids):
        found = ledger.budgets.get(bid)
        if found is None:
            spec = _from_template(ledger, bid) if ledger.templates else None
            if spec is None:
                continue  # no budget = no limit
            found = BudgetStatus(spec=spec, period=_period(ledger, spec, now))
        b = _current(ledger, found, now)
        if b.spent + b.reserved + worst_case > b.spec.limit:
            if b.spec.mode == "hard":
                return ledger, [BudgetRefused(hold_id, bid, b.spec.limit, b.spent, b.reserved, worst_case, now)]
            soft.append(BudgetSoftExceeded(hold_id, bid, b.spec.limit, b.spent, b.reserved, worst_case, now))
        ids.append(bid)
        updated[bid] = attrs.evolve(b, reserved=b.reserved + worst_case)
    held = tuple(ids)
    new = attrs.evolve(
        ledger,
        budgets={**ledger.budgets, **updated},
        holds={**ledger.holds, hold_id: _Hold(worst_case, held, until, ratio, price, max_output)},
    )
    return new, [BudgetReserved(hold_id, worst_case, held, now), *soft]


def _finish(ledger: Ledger, hold_id: str, actual: Decimal | None, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    hold = ledger.holds.get(hold_id)
    if hold is None:
        return _late(ledger, hold_id, actual, now)
    events: list[BudgetEvent] = []
    updated: dict[str, BudgetStatus] = {}
    for bid in hold.budgets:
        if bid not in ledger.budgets:
            continue
        b = _current(ledger, ledger.budgets[bid], now)
        spent = b.spent if actual is None else b.spent + actual
        # Clamped: a budget removed and re-added while this hold was live never counted it.
        charges = b.charges if actual is None else b.charges + 1
        updated[bid] = attrs.evolve(b, reserved=max(_ZERO, b.reserved - hold.amount), spent=spent, charges=charges)
        if actual is not None and actual > hold.amount:
            events.append(BudgetOverrun(hold_id, bid, actual - hold.amount, now))
    holds = {k: v for k, v in ledger.holds.items() if k != hold_id}
    new = attrs.evolve(ledger, budgets={**ledger.budgets, **updated}, holds=holds)
    if hold_id in ledger.expired:  # the id was held again after it expired: one settlement ends both
        new = attrs.evolve(new, expired={k: v for k, v in ledger.expired.items() if k != hold_id})
    done: BudgetEvent = (
        BudgetReleased(hold_id, hold.amount, now)
        if actual is None
        else BudgetSettled(hold_id, hold.amount, actual, now)
    )
    return new, [done, *events]


def _late(ledger: Ledger, hold_id: str, actual: Decimal | None, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    """A settlement of an expired hold: a charge still charges the budgets it named; either drops the note."""
    note = ledger.expired.get(hold_id)
    if note is None:
        return ledger, []  # settled or released already, long expired, or never held
    expired = {k: v for k, v in ledger.expired.items() if k != hold_id}
    if actual is None:
        return attrs.evolve(ledger, expired=expired), []
    updated = {
        bid: attrs.evolve(b, spent=b.spent + actual)
        for bid in note.budgets
        if (b := status(ledger, bid, now)) is not None
    }
    new = attrs.evolve(ledger, budgets={**ledger.budgets, **updated}, expired=expired)
    return new, [LateCharged(hold_id, note.budgets, actual, now)]


def next_expiry(ledger: Ledger) -> float | None:
    """When the earliest live hold's lease ends (None: no hold is live)."""
    return min((h.until for h in ledger.holds.values()), default=None)


def expire(ledger: Ledger, now: float) -> tuple[Ledger, list[HoldExpired]]:
    """Free every hold whose lease has ended by `now`, noting each for a late charge; forget notes
    older than `LATE_CHARGE_S`. The ledger is returned unchanged (the same object) when nothing is due."""
    due = sorted((h.until, hid) for hid, h in ledger.holds.items() if h.until <= now)
    stale = [hid for hid, note in ledger.expired.items() if note.at + LATE_CHARGE_S <= now]
    if not due and not stale:
        return ledger, []
    events: list[HoldExpired] = []
    expired = {k: v for k, v in ledger.expired.items() if k not in stale}
    budgets = dict(ledger.budgets)
    for until, hid in due:
        hold = ledger.holds[hid]
        for bid in hold.budgets:
            if bid in budgets:
                b = _current(ledger, budgets[bid], now)
                budgets[bid] = attrs.evolve(b, reserved=max(_ZERO, b.reserved - hold.amount))
        expired[hid] = _Expired(hold.budgets, until)
        events.append(HoldExpired(hid, hold.budgets, hold.amount, now))
    while len(expired) > _MAX_EXPIRED:
        del expired[next(iter(expired))]
    holds = {k: v for k, v in ledger.holds.items() if k not in {hid for _, hid in due}}
    return attrs.evolve(ledger, budgets=budgets, holds=holds, expired=expired), events


def settle(ledger: Ledger, hold_id: str, actual: Decimal, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    """Charge the actual cost and free the hold. Idempotent: an unknown hold id changes nothing. A hold
    that expired is still charged, once (`LateCharged`)."""
    if not isinstance(actual, Decimal) or actual < 0:
        raise ValueError(f"actual must be a Decimal >= 0, got {actual!r}")
    return _finish(ledger, hold_id, actual, now)


def release(ledger: Ledger, hold_id: str, now: float) -> tuple[Ledger, list[BudgetEvent]]:
    """Free the hold without charging (the call failed before costing anything, or was cancelled)."""
    return _finish(ledger, hold_id, None, now)


@attrs.frozen
class Forecast:
    """Where a budget is heading in its current period, at the rate it has been spent so far."""

    burn_rate: Decimal  # money per second since the period began
    exhausted_at: float | None  # when spent + reserved reaches the limit at that rate (None: not this period)
    confidence: float  # 0..1: grows with the charges seen and the share of the period elapsed


def _expected(hold: _Hold) -> Decimal:
    if hold.ratio is None or hold.price is None:
        return hold.amount  # nothing learned when it was placed: the worst case
    output_cost = min(hold.amount, hold.max_output * hold.price.output / PER_MILLION)
    return reconcile.expected(hold.amount, hold.amount - output_cost, hold.ratio)


def expected_reserved(ledger: Ledger, budget_id: str) -> Decimal:
    """What the live holds on a budget are expected to cost (never more than they hold). A read, for
    status: it scans the holds."""
    b = ledger.budgets.get(budget_id)
    if b is None:
        return _ZERO
    total = sum((_expected(h) for h in ledger.holds.values() if budget_id in h.budgets), _ZERO)
    return min(b.reserved, total)


def forecast(ledger: Ledger, b: BudgetStatus, now: float, *, reserved: Decimal | None = None) -> Forecast | None:
    """The burn rate and projected exhaustion of a budget with a period (None for one that never resets).
    `reserved`: what the holds in flight count for (default: the worst case they hold)."""
    bounds_ = period_bounds(ledger, b.spec, now)
    if bounds_ is None:
        return None
    start, end = bounds_
    elapsed = max(now - max(start, ledger.origin), 1e-9)
    rate = b.spent / Decimal(repr(elapsed))
    left = b.spec.limit - b.spent - (b.reserved if reserved is None else reserved)
    if left <= 0:
        at: float | None = now
    elif rate > 0:
        at = now + float(left / rate)
        at = at if at < end else None
    else:
        at = None
    share = min(1.0, elapsed / max(end - start, 1e-9) * 10)  # a tenth of the period seen: as good as it gets
    return Forecast(rate, at, round(min(1.0, b.charges / 20) * share, 3))
