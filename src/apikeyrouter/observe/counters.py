"""Per-request Prometheus series without prometheus_client's per-update lock.

prometheus_client's `Counter.inc`, `Gauge.inc` and `Histogram.observe` each take a `threading.Lock`
(their values may be updated from any thread). Every per-request update here comes from the one trio
thread, so the lock buys nothing and costs a C call pair per update, several per request. These
families keep plain numbers in a dict keyed by the label values (an update: a dict hit and an add) and
turn them into metric families only when scraped: the exposition (names, `_total`/`_created`,
`_bucket`/`_count`/`_sum`, label order, `le` rendering) is the one prometheus_client produces for its
own classes, so dashboards and alerts see the same series and values.

Register one with `family.register(registry)`. Not for values updated from threads other than the
trio thread (use prometheus_client's classes there).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["CounterFamily", "GaugeValue", "HistogramFamily"]

_le: Callable[[float], str] = floatToGoString  # how prometheus_client renders a bucket bound


class _Family:
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._created: dict[tuple[str, ...], float] = {}  # wall clock: a human-facing sample, set once per child

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)  # a collector: describe() and collect()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def _label_values(self, key: tuple[object, ...]) -> tuple[str, ...]:
        return tuple(str(v) for v in key)

    def _note_created(self, key: tuple[object, ...]) -> None:
        self._created.setdefault(self._label_values(key), time.time())

    def _created_family(self) -> GaugeMetricFamily:
        created = GaugeMetricFamily(f"{self.name}_created", self.documentation, labels=self.labels)
        for labels, at in self._created.items():
            created.add_metric(list(labels), at)
        return created


class CounterFamily(_Family):
    """A counter with labels. `inc(key)`: `key` is the tuple of label values (any objects: rendered with
    `str` at scrape, so `(route, 200)` is fine); an unlabelled counter uses `()`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labels)
        self.values: dict[tuple[object, ...], float] = {}
        if not self.labels:
            self.values[()] = 0.0  # shown from the start, as prometheus_client shows an unlabelled one
            self._note_created(())

    def inc(self, key: tuple[object, ...] = (), amount: float = 1.0) -> None:
        values = self.values
        if key in values:
            values[key] += amount
        else:
            if amount < 0:
                raise ValueError("counters can only be incremented by non-negative amounts")
            self._note_created(key)
            values[key] = amount

    def value(self, key: tuple[object, ...] = ()) -> float:
        return self.values.get(key, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(self._label_values(key)), value)
        yield family
        yield self._created_family()


class HistogramFamily(_Family):
    """A histogram with labels: `observe(key, seconds)` counts into the first bucket whose bound is >= it."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), *, buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labels)
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[object, ...], list[float]] = {}  # per bucket, then +Inf, then the sum

    def observe(self, key: tuple[object, ...], amount: float) -> None:
        child = self._children.get(key)
        if child is None:
            self._note_created(key)
            child = self._children[key] = [0.0] * (len(self.bounds) + 2)
        child[bisect.bisect_left(self.bounds, amount)] += 1.0
        child[-1] += amount

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [_le(b) for b in self.bounds] + ["+Inf"]
        for key, child in self._children.items():
            running = 0.0
            cumulative: list[tuple[str, float]] = []
            for edge, count in zip(edges, child[:-1], strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric(list(self._label_values(key)), cumulative, child[-1])
        yield family
        yield self._created_family()


class GaugeValue(_Family):
    """An unlabelled gauge: `inc()`, `dec()`, `set()`."""

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation)
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value)
        yield family
