"""`BudgetActor`: alone owns the money ledger (global, per-provider and per-key hard budgets).

Every hold is one atomic transition of the pure ledger (domain/budget.py): the check and the hold
happen together, so no number of concurrent requests can overspend a budget. The ledger is stored
after each change, so a restarted actor keeps what was spent and what is held.

Every hold has a lease (the request's deadline, `Hold.lease_until`): a hold whose charge or free was
lost — sent while this actor restarted, or the very message it crashed on — is freed when its lease
ends, before any message is handled from then on, and by a timer set for the earliest lease so an
idle router frees it on time too. Each expiry is a `budget.hold_expired` event and a warning. A charge
that comes after its hold expired is still charged to the budgets the hold named (a warning too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from decimal import Decimal
from typing import Any, assert_never

import structlog
import trio

from apikeyrouter.domain import budget
from apikeyrouter.domain.budget import (
    BudgetEvent,
    BudgetOverrun,
    BudgetRefused,
    BudgetReleased,
    BudgetReserved,
    BudgetSettled,
    BudgetSpec,
    HoldExpired,
    LateCharged,
    Ledger,
)
from apikeyrouter.domain.history import BudgetRow
from apikeyrouter.domain.refusal import Refusal, RefusalKind
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.kernel.timer import WakeTimer
from apikeyrouter.messages.budget import BudgetCommand, Charge, Free, Hold, HoldPlaced, SetBudget, SetBudgets, Wake
from apikeyrouter.observe import BudgetHoldExpired, BudgetOverran, EventBus
from apikeyrouter.store.port import StorePort

__all__ = ["BudgetActor"]

log = structlog.get_logger("apikeyrouter.budget")

_KIND, _ID = "budgets", "ledger"


class BudgetActor(Actor[BudgetCommand]):
    kind = "budget"

    def __init__(self, specs: Iterable[BudgetSpec], *, store: StorePort, events: EventBus) -> None:
        super().__init__("budgets", mailbox=1024)
        self._specs = tuple(specs)
        self._port = store
        self._outbox = store.outbox()
        self._rows: list[BudgetRow] = []
        self._events = events
        self._ledger: Ledger | None = None
        self._timer = WakeTimer(Wake())
        self._draining = False  # stopping: charge and free what is queued, hold nothing new

    async def pre_start(self) -> None:
        now = trio.current_time()
        restored = await self._port.load(_KIND, _ID)
        ledger = restored if isinstance(restored, Ledger) else budget.new_ledger((), now)
        for spec in self._specs:  # the configured limits win over stored ones
            ledger = budget.set_budget(ledger, spec, now)
        self._ledger = ledger
        self._outbox.save(_KIND, _ID, ledger)
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
                out[bid] = {"limit": str(st.spec.limit), "spent": str(st.spent), "reserved": str(st.reserved)}
        return out

    def stop(self) -> None:
        """Charge and free what is already queued before stopping (money the requests spent); holds
        asked for after the stop get `ActorStopped`."""
        inbox = self._inbox
        if self.status == "running" and inbox is not None:
            self._draining = True
            inbox.close()  # the loop ends once the queue is read; new tells fail with ActorStopped
        else:
            super().stop()

    def receive(self, msg: BudgetCommand) -> Awaitable[None] | None:
        if self._draining and isinstance(msg, Hold):
            msg.reply_to.fail(ActorStopped(self.name))
            return None
        now = trio.current_time()
        self._expire(now)  # first: the message sees every ended lease freed, whether the timer ran or not
        match msg:
            case Hold(hold_id=hold_id, budgets=ids, worst_case=amount, lease_until=until, reply_to=reply):
                ledger, events = budget.reserve(self.ledger, hold_id, ids, amount, now, until=until)
                refused = budget.refusal(events)
                self._commit(ledger)
                reply.send(_refusal(msg.key_id, refused) if refused is not None else HoldPlaced(hold_id))
            case Charge(hold_id=hold_id, actual=actual):
                ledger, events = budget.settle(self.ledger, hold_id, actual, now)
                self._report(events)
                self._history(self.ledger, events)
                self._commit(ledger)
            case Free(hold_id=hold_id):
                ledger, _ = budget.release(self.ledger, hold_id, now)
                self._commit(ledger)
            case SetBudgets(specs=specs):
                ledger = self.ledger
                for bid in [b for b in ledger.budgets if b not in {sp.id for sp in specs}]:
                    ledger = budget.remove_budget(ledger, bid)
                for spec in specs:
                    ledger = budget.set_budget(ledger, spec, now)
                self._specs = specs
                self._commit(ledger)
            case SetBudget(spec=spec):
                self._specs = (*(s for s in self._specs if s.id != spec.id), spec)
                self._commit(budget.set_budget(self.ledger, spec, now))
            case Wake():
                pass  # the timer's wake-up: the expiry above was its work
            case _:
                assert_never(msg)
        self._arm_timer(now)
        return self._outbox.drain()  # None unless the store's mailbox was full: then wait for room

    def _expire(self, now: float) -> None:
        ledger, expired = budget.expire(self.ledger, now)
        for ev in expired:
            # A settlement was lost (sent while this actor restarted, most likely): the money it held is free.
            log.warning("budget_hold_expired", hold=ev.hold_id, budgets=list(ev.budgets), amount=str(ev.amount))
            self._events.publish(BudgetHoldExpired(ev))
        self._history(self.ledger, expired)
        self._commit(ledger)

    def _report(self, events: Sequence[BudgetEvent]) -> None:
        for ev in events:
            if isinstance(ev, BudgetOverrun):
                log.warning("budget_overrun", budget=ev.budget, over_by=str(ev.over_by), hold=ev.hold_id)
                self._events.publish(BudgetOverran(ev))
            elif isinstance(ev, LateCharged):
                log.warning("budget_charged_late", hold=ev.hold_id, budgets=list(ev.budgets), actual=str(ev.actual))

    def _commit(self, ledger: Ledger) -> None:
        if ledger is not self._ledger:
            self._ledger = ledger
            rows, self._rows = tuple(self._rows), []
            self._outbox.save(_KIND, _ID, ledger, rows)

    def _history(self, before: Ledger, events: Sequence[BudgetEvent]) -> None:
        """Money that moved, one row per budget it moved on, for the store's budget history."""
        for ev in events:
            match ev:
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
                case BudgetReserved() | BudgetRefused() | BudgetReleased():
                    pass  # holds placed, refused and released move no money
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


def month_specs(config: Any) -> list[BudgetSpec]:
    """Budget specs from a RouterConfig: `global`, `provider:<id>` and `key:<id>` (a month is 30 days)."""
    periods = {"day": 86_400.0, "month": 30 * 86_400.0}
    specs: list[BudgetSpec] = []
    if config.budgets.global_ is not None:
        b = config.budgets.global_
        specs.append(BudgetSpec("global", Decimal(b.limit), periods[b.period]))
    for pid, b in config.budgets.providers.items():
        specs.append(BudgetSpec(f"provider:{pid}", Decimal(b.limit), periods[b.period]))
    for key in config.keys:
        if key.budget is not None:
            specs.append(BudgetSpec(f"key:{key.id}", Decimal(key.budget), periods["month"]))
    return specs
