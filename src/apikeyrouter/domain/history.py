"""What the store keeps as history, and how it is asked for: append-only rows and `StateQuery`.

Three append-only trails sit next to the records (a key's or the ledger's latest state):

- `TransitionRow`: every lifecycle move of every key, never trimmed (the audit trail);
- `DecisionRow`: every upstream attempt of a routed request (which key, model, client, outcome),
  kept for the last `decisions_retention` rows;
- `BudgetRow`: every movement of money against a budget, one row per budget it moved on: a hold
  placed (`held`, the worst case), then its end — `charged` (the settle: the actual cost), `released`
  (freed uncharged: the call failed before costing anything, or was cancelled) or `hold_expired` (its
  lease ended unsettled) — and `charged_late` (a charge after the hold expired) and `overrun` (a charge
  past the worst case held, by how much); the newest `retention` rows are kept.

Rows carry trio-clock times like every other value in the runtime; a store turns them into wall
clock at its edge. `StateQuery` selects one trail by key, model, client, outcome or budget and a
time range (`since`/`until`, trio seconds, both optional), newest first, at most `limit` rows.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import attrs

__all__ = ["BudgetRow", "DecisionRow", "HistoryRow", "StateQuery", "Trail", "TransitionRow"]

Trail = Literal["transitions", "decisions", "budgets"]


@attrs.frozen
class TransitionRow:
    key: str
    from_state: str
    to_state: str
    reason: str
    cause: str
    at: float
    until: float | None = None


@attrs.frozen
class DecisionRow:
    request_id: str
    decision_id: str
    key: str
    provider: str
    model: str | None
    client: str | None
    outcome: str  # "ok" or the failure class
    attempt: int
    latency_s: float
    at: float


@attrs.frozen
class BudgetRow:
    budget: str
    event: Literal["held", "charged", "released", "charged_late", "overrun", "hold_expired"]
    hold_id: str
    amount: Decimal
    at: float


HistoryRow = TransitionRow | DecisionRow | BudgetRow


@attrs.frozen
class StateQuery:
    trail: Trail
    key: str | None = None
    model: str | None = None
    client: str | None = None
    outcome: str | None = None
    budget: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100

    def matches(self, row: HistoryRow) -> bool:
        """The same selection the SQL of a store makes, for stores that filter in Python."""
        if self.since is not None and row.at < self.since:
            return False
        if self.until is not None and row.at > self.until:
            return False
        match row:
            case TransitionRow():
                return self.trail == "transitions" and self.key in (None, row.key)
            case DecisionRow():
                wanted = (self.key, self.model, self.client, self.outcome)
                have = (row.key, row.model, row.client, row.outcome)
                return self.trail == "decisions" and all(w in (None, h) for w, h in zip(wanted, have, strict=True))
            case BudgetRow():
                return self.trail == "budgets" and self.budget in (None, row.budget)
        return False
