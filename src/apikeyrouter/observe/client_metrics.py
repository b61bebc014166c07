"""Metrics by client and team, and of soft budgets served past their limit.

Kept apart from `metrics.ProxyMetrics` (the per-request HTTP series) and registered on its registry:
both feed from inline bus observers, so a scrape reads counters and never asks an actor. The client
label is the client id (a `[[clients]]` id, or an anonymous token's fingerprint), never a token.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from apikeyrouter.observe.bus import EventBus
from apikeyrouter.observe.events import BudgetSoftExceededEvent, RequestAttempted

__all__ = ["ClientMetrics"]


class ClientMetrics:
    def __init__(self, registry: CollectorRegistry, events: EventBus) -> None:
        self._attempts = Counter(
            "apikeyrouter_client_attempts",
            "Upstream attempts made for a client, by client, team and outcome (success or failure class).",
            ("client", "team", "outcome"),
            registry=registry,
        )
        self._soft = Counter(
            "apikeyrouter_budget_soft_exceeded",
            "Requests served past a soft budget's limit, by budget.",
            ("budget",),
            registry=registry,
        )
        self._children: dict[tuple[str, str, str], Any] = {}
        events.observe(RequestAttempted, self.attempt)
        events.observe(BudgetSoftExceededEvent, self.soft_exceeded)

    def attempt(self, event: RequestAttempted) -> None:
        labels = (event.client or "", event.team or "", "success" if event.failure is None else event.failure.value)
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._attempts.labels(*labels)
        child.inc()

    def soft_exceeded(self, event: BudgetSoftExceededEvent) -> None:
        self._soft.labels(event.exceeded.budget).inc()
