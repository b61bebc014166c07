"""Prometheus metrics for the proxy, in a registry of its own (no process-global state).

Failed attempts are counted from the router's `RequestAttempted` events through an inline bus
observer (`router.events.observe(RequestAttempted, metrics.attempt)`; see `EventBus.observe` for why
inline): every attempt, failovers included, for one dict hit and an add.

Hot-path series (updated per request without prometheus_client's lock, see counters.py: an update is a
dict hit and an add):

    apikeyrouter_http_requests_total{route, status}            counter
    apikeyrouter_http_request_duration_seconds{route}          histogram
    apikeyrouter_http_requests_in_flight                       gauge (inference requests)
    apikeyrouter_upstream_attempts_total                       counter (attempts of answered requests)
    apikeyrouter_requests_served_total{key, provider}          counter
    apikeyrouter_request_failures_total{failure_class}         counter (final upstream failure of a request)
    apikeyrouter_attempt_failures_total{failure_class, key}    counter (every failed attempt, failovers included)

Per-key state, read from `router.keys()` only when scraped (zero cost on the hot path):

    apikeyrouter_key_lifecycle{key, provider, state}           1 for the current state, 0 for the others
    apikeyrouter_key_breaker{key, provider, state}             same, for the circuit breaker
    apikeyrouter_key_capacity{key, provider, state}            same, for the capacity level
    apikeyrouter_key_in_flight{key, provider}                  gauge
    apikeyrouter_key_capacity_left_ratio{key, provider}        gauge, 0..1
    apikeyrouter_key_success_ratio{key, provider}              gauge, 0..1
    apikeyrouter_key_latency_seconds{key, provider}            gauge
    apikeyrouter_key_spend{key, provider}                      gauge, in the pricing currency
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from apikeyrouter.observe.counters import CounterFamily, GaugeValue, HistogramFamily
from apikeyrouter.observe.events import RequestAttempted

__all__ = ["CONTENT_TYPE_LATEST", "ProxyMetrics"]

LIFECYCLE_STATES = ("active", "throttled", "exhausted", "invalid", "disabled", "revoked")
BREAKER_STATES = ("closed", "open", "half_open")
CAPACITY_STATES = ("abundant", "constrained", "critical", "exhausted")

# LLM calls span milliseconds (errors, cache hits) to minutes (long generations).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ProxyMetrics:
    """The proxy's series. The per-request ones are `counters` families (no per-update lock, folded into
    metric families at scrape time); anything else registers on `registry` as usual: a
    prometheus_client `Counter`/`Gauge`/`Histogram(..., registry=metrics.registry)`, or a collector
    with `describe()` and `collect()` (as `_StoreCollector`)."""

    def __init__(
        self,
        keys: Callable[[], list[dict[str, Any]]] | None = None,
        store: Callable[[], dict[str, Any] | None] | None = None,
        store_health: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = CounterFamily(
            "apikeyrouter_http_requests", "HTTP requests answered, by route and status.", ("route", "status")
        )
        self._duration = HistogramFamily(
            "apikeyrouter_http_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ("route",),
            buckets=_BUCKETS,
        )
        self.in_flight = GaugeValue("apikeyrouter_http_requests_in_flight", "Inference requests being served now.")
        self._attempts = CounterFamily(
            "apikeyrouter_upstream_attempts", "Upstream attempts made for answered requests."
        )
        self._served = CounterFamily(
            "apikeyrouter_requests_served", "Requests answered, by the key that served them.", ("key", "provider")
        )
        self._failures = CounterFamily(
            "apikeyrouter_request_failures",
            "Requests that failed upstream, by the failure class of their last attempt.",
            ("failure_class",),
        )
        self._attempt_failures = CounterFamily(
            "apikeyrouter_attempt_failures",
            "Upstream attempts that failed (each failover counts), by failure class and key.",
            ("failure_class", "key"),
        )
        for family in (
            self._requests,
            self._duration,
            self.in_flight,
            self._attempts,
            self._served,
            self._failures,
            self._attempt_failures,
        ):
            family.register(r)
        if keys is not None:
            r.register(_KeyStateCollector(keys))
        if store is not None:
            r.register(_StoreCollector(store))
        if store_health is not None:
            r.register(_StoreHealthCollector(store_health))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self._requests.inc((route, status))
        self._duration.observe((route,), seconds)

    def served(self, key: str, provider: str, attempts: int) -> None:
        self._served.inc((key, provider))
        self._attempts.inc((), attempts)

    def attempt(self, event: RequestAttempted) -> None:
        """The bus observer of `RequestAttempted` (called inline by the publisher): count failed attempts."""
        if event.failure is not None:
            self._attempt_failures.inc((event.failure.value, event.key))

    def failed(self, failure_class: str) -> None:
        self._failures.inc((failure_class,))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _StoreCollector:
    """The shared store (Redis, with several instances): reachable or not, how many instances are live."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        if st is None:
            return
        rows = (
            ("apikeyrouter_store_up", "1 while the shared store answers; 0: limits on local shares.", st["up"]),
            ("apikeyrouter_store_live_instances", "Instances heartbeating on the shared store.", st["live_instances"]),
            ("apikeyrouter_store_pending_settlements", "Settlements waiting for the store.", st["pending_settlements"]),
        )
        for name, doc, value in rows:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family


class _StoreHealthCollector:
    """Any store (memory, SQLite, Redis): failing or not, and what failed or was dropped since start."""

    _COUNTERS = (
        ("apikeyrouter_store_write_failures", "Store writes that failed (kept and tried again).", "write_failures"),
        ("apikeyrouter_store_dropped_rows", "History rows dropped while the store was away.", "dropped_rows"),
        ("apikeyrouter_store_redis_call_failures", "Shared-limit calls to Redis that failed.", "redis_call_failures"),
        ("apikeyrouter_store_redis_slow_calls", "Of those, timeouts that left Redis counted up.", "redis_slow_calls"),
        ("apikeyrouter_store_shared_dropped", "Settlements or benches never sent to Redis.", "shared_dropped"),
    )

    def __init__(self, health: Callable[[], dict[str, Any] | None]) -> None:
        self._health = health

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        st = self._health()
        if st is None:
            return
        kind = [str(st["kind"])]
        doc = "1 while the store fails to write or answer."
        failing = GaugeMetricFamily("apikeyrouter_store_failing", doc, labels=["kind"])
        failing.add_metric(kind, 1.0 if st["failing"] else 0.0)
        yield failing
        pending = GaugeMetricFamily("apikeyrouter_store_pending_rows", "History rows not written yet.", labels=["kind"])
        pending.add_metric(kind, float(st["pending_rows"]))
        yield pending
        for name, doc, field in self._COUNTERS:
            if field in st:
                family = CounterMetricFamily(name, doc, labels=["kind"])
                family.add_metric(kind, float(st[field]))
                yield family


class _KeyStateCollector:
    def __init__(self, keys: Callable[[], list[dict[str, Any]]]) -> None:
        self._keys = keys

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        entries = self._keys()
        labels = ["key", "provider"]
        enums = {
            "lifecycle": (
                GaugeMetricFamily(
                    "apikeyrouter_key_lifecycle",
                    "Lifecycle state of each key (1 = current).",
                    labels=[*labels, "state"],
                ),
                LIFECYCLE_STATES,
            ),
            "breaker": (
                GaugeMetricFamily(
                    "apikeyrouter_key_breaker",
                    "Circuit breaker state of each key (1 = current).",
                    labels=[*labels, "state"],
                ),
                BREAKER_STATES,
            ),
            "capacity": (
                GaugeMetricFamily(
                    "apikeyrouter_key_capacity", "Capacity level of each key (1 = current).", labels=[*labels, "state"]
                ),
                CAPACITY_STATES,
            ),
        }
        numbers = {
            "in_flight": GaugeMetricFamily("apikeyrouter_key_in_flight", "Requests in flight per key.", labels=labels),
            "capacity_left_pct": GaugeMetricFamily(
                "apikeyrouter_key_capacity_left_ratio", "Share of the tightest quota window left.", labels=labels
            ),
            "success_rate": GaugeMetricFamily(
                "apikeyrouter_key_success_ratio", "Recent success rate per key.", labels=labels
            ),
            "latency_ms": GaugeMetricFamily(
                "apikeyrouter_key_latency_seconds", "Recent upstream latency per key.", labels=labels
            ),
            "spend": GaugeMetricFamily("apikeyrouter_key_spend", "Spend in the current period per key.", labels=labels),
        }
        scale = {"capacity_left_pct": 0.01, "latency_ms": 0.001}
        for entry in entries:
            ident = [str(entry.get("id", "")), str(entry.get("provider", ""))]
            for field, (family, states) in enums.items():
                current = entry.get(field)
                for state in states:
                    family.add_metric([*ident, state], 1.0 if current == state else 0.0)
                if current is not None and current not in states:
                    family.add_metric([*ident, str(current)], 1.0)
            for field, family in numbers.items():
                value = _number(entry.get(field))
                if value is not None:
                    family.add_metric(ident, value * scale.get(field, 1.0))
        for family, _ in enums.values():
            yield family
        yield from numbers.values()


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # money arrives as a Decimal string
    except (TypeError, ValueError):
        return None
