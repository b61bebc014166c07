"""Metrics by client and team, of soft budgets served past their limit, and each budget's money.

Kept apart from `metrics.ProxyMetrics` (the per-request HTTP series) and registered on its registry:
both feed from inline bus observers, so a scrape reads counters and never asks an actor. The client
label is the client id (a `[[clients]]` id, or an anonymous token's fingerprint), never a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from apikeyrouter.observe.bus import EventBus
from apikeyrouter.observe.counters import CounterFamily
from apikeyrouter.observe.events import BudgetSoftExceededEvent, RequestAttempted

__all__ = ["ClientMetrics"]


class ClientMetrics:
    def __init__(
        self, registry: CollectorRegistry, events: EventBus, budgets: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self._attempts = CounterFamily(
            "apikeyrouter_client_attempts",
            "Upstream attempts made for a client, by client, team and outcome (success or failure class).",
            ("client", "team", "outcome"),
        )
        self._attempts.register(registry)  # counted per attempt: no per-update lock (counters.py)
        self._soft = Counter(
            "apikeyrouter_budget_soft_exceeded",
            "Requests served past a soft budget's limit, by budget.",
            ("budget",),
            registry=registry,
        )
        events.observe(RequestAttempted, self.attempt)
        events.observe(BudgetSoftExceededEvent, self.soft_exceeded)
        if budgets is not None:
            registry.register(_BudgetCollector(budgets))

    def attempt(self, event: RequestAttempted) -> None:
        outcome = "success" if event.failure is None else event.failure.value
        self._attempts.inc((event.client or "", event.team or "", outcome))

    def soft_exceeded(self, event: BudgetSoftExceededEvent) -> None:
        self._soft.labels(event.exceeded.budget).inc()


class _BudgetCollector:
    """Each budget's money at scrape time (`router.budgets()`, a read of the ledger's frozen value)."""

    _FIELDS = (("limit", "limit"), ("spent", "spent"), ("reserved", "reserved"), ("remaining", "remaining"))

    def __init__(self, budgets: Callable[[], dict[str, Any]]) -> None:
        self._budgets = budgets

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        shown = self._budgets()
        for name, field in self._FIELDS:
            family = GaugeMetricFamily(f"apikeyrouter_budget_{name}", f"Budget money: {field}.", labels=("budget",))
            for bid in sorted(shown):
                if field in shown[bid]:
                    family.add_metric([bid], float(shown[bid][field]))
            yield family
        rate = GaugeMetricFamily(
            "apikeyrouter_budget_burn_rate_per_hour", "Money spent per hour this period.", labels=("budget",)
        )
        for bid in sorted(shown):
            if "burn_rate_per_hour" in shown[bid]:
                rate.add_metric([bid], float(shown[bid]["burn_rate_per_hour"]))
        yield rate
