"""BudgetActor protocol: hold a request's worst case against every budget that applies, then charge or free it."""

from __future__ import annotations

from decimal import Decimal

import attrs

from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.rates import RateLimit
from apikeyrouter.domain.reconcile import Ratio
from apikeyrouter.domain.refusal import Refusal
from apikeyrouter.kernel.actor import Reply

__all__ = ["BudgetCommand", "Charge", "Free", "Hold", "HoldPlaced", "SetBudget", "SetBudgets", "Wake"]


@attrs.frozen
class Hold:
    """Reply: `HoldPlaced` when held on every budget, else a `Refusal` (kind budget) naming the budget
    that would be overspent. `key_id`: the key the request would use (carried into the refusal).
    `lease_until`: the hold is freed then if it was neither charged nor freed (its settlement was lost);
    a charge that comes later is still charged (domain/budget.py). `tokens`: the request's worst-case
    tokens, taken with one request in the rpm/tpm window of every named scope that has one
    (domain/rates.py); `client`: who asked, for the events a soft budget emits. `ratio`, `price`,
    `max_output`: what reconcile had learned for the request's (provider, model), the price and its
    `max_tokens` — references the request already had, from which a soft budget's projection reads the
    hold's expected cost (domain/budget.py)."""

    hold_id: str
    budgets: tuple[str, ...]
    worst_case: Decimal
    lease_until: float
    reply_to: Reply[HoldPlaced | Refusal]
    key_id: str = ""
    tokens: int = 0
    client: str | None = None
    ratio: Ratio | None = None
    price: ModelPrice | None = None
    max_output: int = 0


@attrs.frozen
class HoldPlaced:
    hold_id: str


@attrs.frozen
class Charge:
    """The actual cost of a held call: charged, and the hold freed. Late (the hold expired): still charged."""

    hold_id: str
    actual: Decimal
    tokens: int | None = None  # the actual tokens, for the rpm/tpm windows (None: keep the worst case)


@attrs.frozen
class Free:
    hold_id: str


@attrs.frozen
class SetBudget:
    """Add or change a budget at run time (a key registered with its own budget)."""

    spec: BudgetSpec


@attrs.frozen
class SetBudgets:
    """Replace the whole set of budgets (a config reload): new ones added, changed limits applied,
    ones no longer configured removed. Spent and held amounts of kept budgets stay."""

    specs: tuple[BudgetSpec, ...]
    templates: tuple[BudgetSpec, ...] = ()  # e.g. "client:": the budget each client not configured gets
    rates: tuple[RateLimit, ...] = ()  # client and team rpm/tpm


@attrs.frozen
class Wake:
    """Internal: the earliest hold's lease has ended; expire it now (sent by the budget actor's timer)."""


BudgetCommand = Hold | Charge | Free | SetBudget | SetBudgets | Wake
