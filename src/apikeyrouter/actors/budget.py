"""`BudgetActor`: alone owns the money ledger (global, provider, key, team and client budgets, hard or
soft) and the client and team rpm/tpm windows.

Every hold is one atomic transition of the pure ledger (domain/budget.py): the check and the hold
happen together, so no number of concurrent requests can overspend a budget. The ledger is stored
after each change, so a restarted actor keeps what was spent and what is held.

Every hold has a lease (the request's deadline, `Hold.lease_until`): a hold whose charge or free was
lost — sent while this actor restarted, or the very message it crashed on — is freed when its lease
ends, before any message is handled from then on, and by a timer set for the earliest lease so an
idle router frees it on time too. Each expiry is a `budget.hold_expired` event and a warning. A charge
that comes after its hold expired is still charged to the budgets the hold named (a warning too).

A hold first takes its request in the rpm/tpm windows of the scopes it names (domain/rates.py), then
holds the money; if either refuses, neither changes: one message, one atomic step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, assert_never

import attrs
import structlog
import trio

from apikeyrouter.domain import budget, rates
from apikeyrouter.domain.budget import (
    BudgetEvent,
    BudgetOverrun,
    BudgetRefused,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    BudgetSoftExceeded,
    BudgetSpec,
    HoldExpired,
    LateCharged,
    Ledger,
)
from apikeyrouter.domain.history import BudgetRow
from apikeyrouter.domain.period import CalendarPeriod, PeriodUnit
from apikeyrouter.domain.rates import RateLimit, RateRefused, Rates
from apikeyrouter.domain.refusal import Refusal, RefusalKind
from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.kernel.timer import WakeTimer
from apikeyrouter.messages.budget import BudgetCommand, Charge, Free, Hold, HoldPlaced, SetBudget, SetBudgets, Wake
from apikeyrouter.observe import BudgetHoldExpired, BudgetOverran, BudgetSoftExceededEvent, EventBus
from apikeyrouter.store.port import StorePort

__all__ = ["BudgetActor"]

log = structlog.get_logger("apikeyrouter.budget")

_KIND, _ID = "budgets", "ledger"


class BudgetActor(Actor[BudgetCommand]):
    kind = "budget"

    def __init__(
        self,
        specs: Iterable[BudgetSpec],
        *,
        store: StorePort,
        events: EventBus,
        templates: Iterable[BudgetSpec] = (),
        limits: Iterable[RateLimit] = (),
        wall_offset: float = 0.0,
        later: Callable[[str], bool] | None = None,
    ) -> None:
        """`later`: budget ids set after start (keys the library registers): a stored one is kept for them."""
        super().__init__("budgets", mailbox=1024)
        self._later = later
        self._specs = tuple(specs)
        self._templates = tuple(templates)
        self._port = store
        self._outbox = store.outbox()
        self._rows: list[BudgetRow] = []
        self._events = events
        self._wall_offset = wall_offset
        self._ledger: Ledger | None = None
        self._rates: Rates = rates.new_rates(limits)
        self._timer = WakeTimer(Wake())

    async def pre_start(self) -> None:
        now = trio.current_time()
        restored = await self._port.load(_KIND, _ID)
        ledger = restored if isinstance(restored, Ledger) else budget.new_ledger((), now)
        # Calendar periods are cut on this process's wall clock (a restored ledger's may be stale).
        ledger = attrs.evolve(ledger, wall_offset=self._wall_offset)
        # The stored client and team windows, for the scopes still limited (on the configured limits).
        # Renamed: a new process numbers its requests from 1 again, and an entry id already in a window is
        # taken as admitted (idempotence), so a stored "req-1:2" would let the new "req-1:2" through.
        self._rates = rates.set_limits(rates.restored(ledger.rates), self._rates.limits.values())
        # The configured budgets win over stored ones (written under another config, perhaps): as a reload.
        self._ledger = budget.reconfigure(ledger, self._specs, self._templates, now, later=self._later)
        self._outbox.save(_KIND, _ID, self._ledger)
        self._expire(now)  # restored holds whose lease ended while no instance ran
        self._arm_timer(now)
        pending = self._outbox.drain()
        if pending is not None:
            await pending

    async def post_stop(self) -> None:
        # The lease timer is not work in flight: without this a stop would wait for the next lease.
        self._timer.cancel()
        pending = self._outbox.drain()  # cut short while waiting for room in the store: send the rest
        if pending is not None:
            await pending

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "BudgetActor used before it started"
        return self._ledger

    def state_summary(self) -> dict[str, Any]:
        now = trio.current_time()
        out: dict[str, Any] = {}
        for bid in sorted(self.ledger.budgets):
            st = budget.status(self.ledger, bid, now)
            if st is not None:
                out[bid] = self._describe(st, now)
        return out

    def _describe(self, st: budget.BudgetStatus, now: float) -> dict[str, Any]:
        spec = st.spec
        out: dict[str, Any] = {
            "limit": str(spec.limit),
            "spent": str(st.spent),
            "reserved": str(st.reserved),
            "remaining": str(max(Decimal(0), spec.limit - st.spent - st.reserved)),
            "mode": spec.mode,
        }
        bounds = budget.period_bounds(self.ledger, spec, now)
        if bounds is not None:
            start, end = bounds
            out["period"] = spec.calendar.unit if spec.calendar is not None else f"{spec.period_s:g}s"
            out["period_start"] = render_wall(start, self._wall_offset)
            out["period_end"] = render_wall(end, self._wall_offset)
        # Soft: projected from what the holds in flight are expected to cost (reconcile); hard: from
        # the worst case they hold, as the budget enforces.
        expected = budget.expected_reserved(self.ledger, spec.id) if spec.mode == "soft" else None
        fc = budget.forecast(self.ledger, st, now, reserved=expected)
        if fc is not None:
            out["projection_basis"] = "worst_case" if expected is None else "expected"
            if expected is not None:
                out["reserved_expected"] = str(expected)
            out["burn_rate_per_hour"] = str(round(fc.burn_rate * 3600, 8))
            at = fc.exhausted_at
            out["projected_exhaustion"] = None if at is None else render_wall(at, self._wall_offset)
            out["projection_confidence"] = fc.confidence
        return out

    def status_of(self, budget_id: str) -> dict[str, Any] | None:
        """One budget as `state_summary` shows it (None: no such budget)."""
        st = budget.status(self.ledger, budget_id, trio.current_time())
        return None if st is None else {"id": budget_id, **self._describe(st, trio.current_time())}

    def stop(self) -> None:
        """Charge and free what is already queued before stopping (money the requests spent); holds
        asked for after the stop get `ActorStopped`."""
        self.stop_after_queue()

    def receive(self, msg: BudgetCommand) -> Awaitable[None] | None:
        if self.draining and isinstance(msg, Hold):
            msg.reply_to.fail(ActorStopped(self.name))
            return None
        now = trio.current_time()
        self._expire(now)  # first: the message sees every ended lease freed, whether the timer ran or not
        match msg:
            case Hold():
                msg.reply_to.send(self._hold(msg, now))
            case Charge(hold_id=hold_id, actual=actual, tokens=tokens):
                ledger, events = budget.settle(self.ledger, hold_id, actual, now)
                if tokens is not None:
                    self._rates = rates.settle(self._rates, hold_id, tokens)
                self._report(events)
                self._history(self.ledger, events)
                self._commit(ledger)
            case Free(hold_id=hold_id):
                ledger, events = budget.release(self.ledger, hold_id, now)
                self._rates = rates.release(self._rates, hold_id)
                self._history(self.ledger, events)
                self._commit(ledger)
            case SetBudgets(specs=specs, templates=templates, rates=limits):
                self._set_budgets(specs, templates, now)
                self._rates = rates.set_limits(self._rates, limits)
            case SetBudget(spec=spec):
                self._specs = (*(s for s in self._specs if s.id != spec.id), spec)
                self._commit(budget.set_budget(self.ledger, spec, now))
            case Wake():
                pass  # the timer's wake-up: the expiry above was its work
            case _:
                assert_never(msg)
        self._arm_timer(now)
        return self._outbox.drain()  # None unless the store's mailbox was full: then wait for room

    def _hold(self, msg: Hold, now: float) -> HoldPlaced | Refusal:
        """Take the request's place in the rate windows, then hold its money: both, or neither."""
        admitted, limited = rates.admit(self._rates, msg.hold_id, msg.budgets, msg.tokens, now)
        if limited is not None:
            return _rate_refusal(msg.key_id, limited)
        ledger, events = budget.reserve(
            self.ledger,
            msg.hold_id,
            msg.budgets,
            msg.worst_case,
            now,
            until=msg.lease_until,
            ratio=msg.ratio,
            price=msg.price,
            max_output=msg.max_output,
        )
        refused = budget.refusal(events)
        if refused is not None:
            return _refusal(msg.key_id, refused)
        self._rates = admitted
        self._report(events, client=msg.client)
        self._history(self.ledger, events)
        self._commit(ledger)
        return HoldPlaced(msg.hold_id)

    def _set_budgets(self, specs: tuple[BudgetSpec, ...], templates: tuple[BudgetSpec, ...], now: float) -> None:
        """A reload: configured budgets replaced; budgets made from a template kept (on its new limits)
        while it lasts."""
        self._specs = specs
        self._templates = templates
        self._commit(budget.reconfigure(self.ledger, specs, templates, now))

    def _expire(self, now: float) -> None:
        ledger, expired = budget.expire(self.ledger, now)
        for ev in expired:
            # A settlement was lost (sent while this actor restarted, most likely): the money it held is free.
            log.warning("budget_hold_expired", hold=ev.hold_id, budgets=list(ev.budgets), amount=str(ev.amount))
            self._events.publish(BudgetHoldExpired(ev))
        self._history(self.ledger, expired)
        self._commit(ledger)

    def _report(self, events: Sequence[BudgetEvent], *, client: str | None = None) -> None:
        for ev in events:
            if isinstance(ev, BudgetSoftExceeded):
                log.info("budget_soft_exceeded", budget=ev.budget, limit=str(ev.limit), hold=ev.hold_id, client=client)
                self._events.publish(BudgetSoftExceededEvent(ev, client=client))
            elif isinstance(ev, BudgetOverrun):
                log.warning("budget_overrun", budget=ev.budget, over_by=str(ev.over_by), hold=ev.hold_id)
                self._events.publish(BudgetOverran(ev))
            elif isinstance(ev, LateCharged):
                log.warning("budget_charged_late", hold=ev.hold_id, budgets=list(ev.budgets), actual=str(ev.actual))

    def _commit(self, ledger: Ledger) -> None:
        if ledger.rates is not self._rates:  # the windows travel in the ledger's record (restored on start)
            ledger = attrs.evolve(ledger, rates=self._rates)
        if ledger is not self._ledger:
            self._ledger = ledger
            rows, self._rows = tuple(self._rows), []
            self._outbox.save(_KIND, _ID, ledger, rows)

    def _history(self, before: Ledger, events: Sequence[BudgetEvent]) -> None:
        """Money that moved, one row per budget it moved on, for the store's budget history (written by
        the store writer off the request path: here a row is built and queued, nothing more)."""
        for ev in events:
            match ev:
                case BudgetReserved():
                    self._rows.extend(BudgetRow(b, "held", ev.hold_id, ev.amount, ev.at) for b in ev.budgets)
                case BudgetReleased():
                    hold = before.holds.get(ev.hold_id)
                    names = hold.budgets if hold is not None else ()
                    self._rows.extend(BudgetRow(b, "released", ev.hold_id, ev.amount, ev.at) for b in names)
                case BudgetSettled():
                    hold = before.holds.get(ev.hold_id)
                    names = hold.budgets if hold is not None else ()
                    self._rows.extend(BudgetRow(b, "charged", ev.hold_id, ev.actual, ev.at) for b in names)
                case LateCharged():
                    self._rows.extend(BudgetRow(b, "charged_late", ev.hold_id, ev.actual, ev.at) for b in ev.budgets)
                case BudgetOverrun():
                    self._rows.append(BudgetRow(ev.budget, "overrun", ev.hold_id, ev.over_by, ev.at))
                case HoldExpired():
                    self._rows.extend(BudgetRow(b, "hold_expired", ev.hold_id, ev.amount, ev.at) for b in ev.budgets)
                case BudgetRefused() | BudgetSoftExceeded():
                    pass  # a hold refused moves no money (nor does a soft limit passed: its hold is a row)
                case _:
                    assert_never(ev)

    def _arm_timer(self, now: float) -> None:
        """Wake up when the earliest lease ends, so an idle router frees a lost hold on time too."""
        at = budget.next_expiry(self.ledger)
        self._timer.arm(None if at is None else max(at, now), ref=self.ref, nursery=self._nursery)


def _refusal(key_id: str, refused: BudgetRefused) -> Refusal:
    """A budget refusal as the request path sees it: which budget, and the amounts behind the no."""
    detail = {
        "requested": refused.requested,
        "available": refused.limit - refused.spent - refused.reserved,
        "limit": refused.limit,
        "spent": refused.spent,
        "reserved": refused.reserved,
    }
    return Refusal(key_id, RefusalKind.BUDGET, budget=refused.budget, detail=detail)


def _rate_refusal(key_id: str, limited: RateRefused) -> Refusal:
    """A client's or team's rpm/tpm window is full: a quota refusal that lifts when the window slides."""
    detail = {
        "window": f"{limited.scope} {limited.window}",
        "reason": limited.message.split(": ", 1)[1],
        "scope": limited.scope,  # the caller's own limit: no other key would take it
    }
    return Refusal(key_id, RefusalKind.QUOTA, retry_at=limited.retry_at, detail=detail)


def budget_spec(budget_id: str, b: Any, timezone: str) -> BudgetSpec:
    """A config `Budget` table (limit, period, mode) as the ledger's spec, its period on the calendar."""
    unit: PeriodUnit = b.period
    return BudgetSpec(budget_id, Decimal(b.limit), calendar=CalendarPeriod(unit, timezone), mode=b.mode)


def month_specs(config: Any) -> list[BudgetSpec]:
    """Budget specs from a RouterConfig: `global`, `provider:<id>`, `key:<id>` (monthly), `team:<id>`
    and `client:<id>`, each on the calendar of `budgets.timezone`."""
    tz = config.budgets.timezone
    specs: list[BudgetSpec] = []
    if config.budgets.global_ is not None:
        specs.append(budget_spec("global", config.budgets.global_, tz))
    for pid, b in config.budgets.providers.items():
        specs.append(budget_spec(f"provider:{pid}", b, tz))
    for key in config.keys:
        if key.budget is not None:
            specs.append(BudgetSpec(f"key:{key.id}", Decimal(key.budget), calendar=CalendarPeriod("month", tz)))
    for team in config.teams:
        if team.budget is not None:
            specs.append(budget_spec(f"team:{team.id}", team.budget, tz))
    for client in config.clients:
        if client.budget is not None:
            specs.append(budget_spec(f"client:{client.id}", client.budget, tz))
    return specs + policy_specs(config.policies, tz)


def policy_specs(policies: Iterable[Any], timezone: str) -> list[BudgetSpec]:
    """`policy:<id>` for every cost policy with a budget: held by each request the policy applies to."""
    return [budget_spec(f"policy:{p.id}", p.effect.budget, timezone) for p in policies if p.effect.budget is not None]


def client_templates(config: Any) -> list[BudgetSpec]:
    """The budget every client without one of its own gets (`budgets.client_default`), if set."""
    default = config.budgets.client_default
    return [] if default is None else [budget_spec("client:", default, config.budgets.timezone)]


def rate_limits(config: Any) -> list[RateLimit]:
    """The rpm/tpm of every configured client and team."""
    limits = [RateLimit(f"team:{t.id}", t.rpm, t.tpm) for t in config.teams]
    limits += [RateLimit(f"client:{c.id}", c.rpm, c.tpm) for c in config.clients]
    return [lim for lim in limits if lim.rpm is not None or lim.tpm is not None]
