"""What the dashboard shows, as JSON: request and error rates, capacity burn-down, budget projections.

`RequestRates` counts every attempt inline as the router publishes it (`EventBus.observe`: O(1), a dict
increment into the current second's bucket), so the rates a page shows at load cover the last minutes,
not only the time it has been open. Capacity and spend are sampled lazily, whenever a snapshot is built
(at most once a second, only while someone watches): no task, no polling when nobody looks.

Projections are pure functions of the samples. A key's time to exhaustion and its confidence are the
key's own (`KeySnapshot.prediction`, from the domain); a budget's is its remaining money over the spend
rate across the sampled window, with a confidence that grows with the window's length and the number
of samples that moved.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Any

from apikeyrouter.observe import RequestAttempted, render_wall

__all__ = ["BudgetProjection", "RequestRates", "Samples", "project_budget", "rates_json"]

RATE_SECONDS = 120  # how far back the rate chart goes
SAMPLE_SECONDS = 1.0  # the finest sampling of capacity and spend
SAMPLES_KEPT = 300  # five minutes of burn-down at one sample a second
PROJECTION_WINDOW_S = 300.0  # spend rate measured over at most this much history
FULL_CONFIDENCE_S = 120.0  # a spend rate seen over two minutes (or more) is trusted fully


class RequestRates:
    """Attempts per second by outcome ("success" or a failure class), the last `RATE_SECONDS` seconds."""

    def __init__(self, seconds: int = RATE_SECONDS) -> None:
        self._buckets: deque[tuple[int, dict[str, int]]] = deque(maxlen=seconds)

    def record(self, event: RequestAttempted) -> None:
        second = math.floor(event.at)
        outcome = "success" if event.failure is None else event.failure.value
        if not self._buckets or self._buckets[-1][0] < second:
            self._buckets.append((second, {}))
        counts = self._buckets[-1][1]  # a late event (earlier second) counts in the newest bucket
        counts[outcome] = counts.get(outcome, 0) + 1

    def series(self, now: float, seconds: int = RATE_SECONDS) -> list[tuple[int, dict[str, int]]]:
        """One (second, counts) per second up to `now`, zero-filled (the newest second still filling)."""
        last = math.floor(now)
        first = last - seconds + 1
        found = {sec: counts for sec, counts in self._buckets if sec >= first}
        return [(sec, dict(found.get(sec, {}))) for sec in range(first, last + 1)]


def rates_json(series: Sequence[tuple[int, Mapping[str, int]]], wall_offset: float) -> dict[str, Any]:
    """The chart's series plus summary figures: requests/s over the last 10 s, error share by class over
    the whole window."""
    outcomes = sorted({name for _, counts in series for name in counts})
    totals = {name: sum(c.get(name, 0) for _, c in series) for name in outcomes}
    attempts = sum(totals.values())
    recent = series[-11:-1] if len(series) > 10 else series  # whole seconds only: the last one is filling
    recent_total = sum(sum(c.values()) for _, c in recent)
    errors = {name: n for name, n in totals.items() if name != "success"}
    return {
        "start": series[0][0] if series else None,
        "start_wall": render_wall(series[0][0], wall_offset) if series else None,
        "outcomes": outcomes,
        "series": [[counts.get(name, 0) for name in outcomes] for _, counts in series],
        "per_second": round(recent_total / max(len(recent), 1), 2),
        "attempts": attempts,
        "error_rate": round(sum(errors.values()) / attempts, 4) if attempts else 0.0,
        "errors_by_class": errors,
    }


class Samples:
    """Values of named series over time (trio seconds), at most one sample per `SAMPLE_SECONDS`."""

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self._kept = kept
        self._series: dict[str, deque[tuple[float, float]]] = {}
        self._last: float | None = None

    def due(self, now: float) -> bool:
        return self._last is None or now - self._last >= SAMPLE_SECONDS

    def add(self, now: float, values: Mapping[str, float]) -> None:
        self._last = now
        for name, value in values.items():
            self._series.setdefault(name, deque(maxlen=self._kept)).append((now, value))
        for gone in [name for name in self._series if name not in values]:
            del self._series[gone]  # a removed key or budget

    def get(self, name: str) -> list[tuple[float, float]]:
        return list(self._series.get(name, ()))


class BudgetProjection:
    __slots__ = ("confidence", "per_hour", "seconds")

    def __init__(self, seconds: float | None, confidence: float, per_hour: float) -> None:
        self.seconds = seconds
        self.confidence = confidence
        self.per_hour = per_hour


def project_budget(samples: Iterable[tuple[float, float]], remaining: float, now: float) -> BudgetProjection:
    """When `remaining` money runs out at the spend rate the samples (time, spent) show.

    None seconds: no spend in the window (no projection, not "never"). The rate is the spent delta over the
    window, not a fit: spend only grows (a budget period reset shows as a drop, and the window restarts
    there)."""
    window = [(t, v) for t, v in samples if now - t <= PROJECTION_WINDOW_S]
    for i in range(len(window) - 1, 0, -1):
        if window[i][1] < window[i - 1][1]:
            window = window[i:]  # the period reset: only what came after counts
            break
    if len(window) < 2:
        return BudgetProjection(None, 0.0, 0.0)
    (t0, v0), (t1, v1) = window[0], window[-1]
    span = t1 - t0
    if span <= 0 or v1 <= v0:
        return BudgetProjection(None, 0.0, 0.0)
    rate = (v1 - v0) / span
    moves = sum(1 for a, b in pairwise(window) if b[1] > a[1])
    confidence = min(span / FULL_CONFIDENCE_S, 1.0) * min(moves / 5, 1.0)
    seconds = max(remaining, 0.0) / rate
    return BudgetProjection(seconds, round(confidence, 3), rate * 3600)


def money(text: Any) -> Decimal:
    try:
        return Decimal(str(text))
    except (InvalidOperation, ValueError):
        return Decimal(0)
