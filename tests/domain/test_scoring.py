"""Scoring and eligibility: each objective prefers the right key; reasons read like the issue's."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apikeyrouter.domain import stats
from apikeyrouter.domain.circuit import BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import CapacityState, Prediction
from apikeyrouter.domain.scoring import (
    OBJECTIVES,
    Excluded,
    KeyView,
    Weights,
    eligibility,
    rank,
    score,
    weights_for,
)

# Trio time 100.0 is 12:04:05 UTC on the wall (of 1970-01-01).
WALL = 12 * 3600 + 4 * 60 + 5 - 100.0
CHEAP = ModelPrice(Decimal("0.15"), Decimal("0.60"))
DEAR = ModelPrice(Decimal("2.50"), Decimal("10.00"))


def test_throttled_reason_names_the_wall_time_and_retry_after() -> None:
    v = KeyView("k2", "openai", lifecycle=KeyState.THROTTLED, lifecycle_until=100.0, retry_after_s=30.0)
    assert eligibility(v, "gpt-4o-mini", 70.0, wall_offset=WALL) == Excluded(
        "k2", "throttled", "k2: throttled until 1970-01-01T12:04:05.000Z (Retry-After 30s)", 100.0
    )
    assert eligibility(v, "gpt-4o-mini", 100.0, wall_offset=WALL) is None


@pytest.mark.parametrize(
    ("view", "kind", "reason", "until"),
    [
        (KeyView("k1", "p", models=frozenset({"m2"})), "model", "k1: does not serve model m", None),
        (
            KeyView("k1", "p", lifecycle=KeyState.REVOKED, lifecycle_reason="leaked"),
            "revoked",
            "k1: revoked (leaked)",
            None,
        ),
        (KeyView("k1", "p", lifecycle=KeyState.INVALID, lifecycle_reason="401"), "invalid", "k1: invalid (401)", None),
        (
            KeyView("k1", "p", breaker=BreakerState.OPEN, breaker_until=100.0),
            "circuit_open",
            "k1: circuit open until 1970-01-01T12:04:05.000Z",
            100.0,
        ),
        (
            KeyView("k1", "p", breaker=BreakerState.HALF_OPEN, breaker_until=100.0, probe_in_flight=True),
            "probe",
            "k1: circuit half-open, probe in flight until 1970-01-01T12:04:05.000Z",
            100.0,
        ),
        (
            KeyView("k1", "p", capacity=CapacityState.EXHAUSTED, capacity_window="rpd", capacity_retry_at=100.0),
            "quota",
            "k1: quota exhausted (rpd) until 1970-01-01T12:04:05.000Z",
            100.0,
        ),
        (KeyView("k1", "p", in_flight=8, in_flight_limit=8), "in_flight", "k1: at in-flight limit (8/8)", None),
    ],
)
def test_every_exclusion_reason(view: KeyView, kind: str, reason: str, until: float | None) -> None:
    assert eligibility(view, "m", 50.0, wall_offset=WALL) == Excluded("k1", kind, reason, until)


def test_until_is_when_every_timed_reason_has_passed() -> None:
    v = KeyView(
        "k", "p", lifecycle=KeyState.THROTTLED, lifecycle_until=60.0, breaker=BreakerState.OPEN, breaker_until=90.0
    )
    ex = eligibility(v, None, 50.0)
    assert ex is not None and ex.kind == "throttled" and ex.until == 90.0
    ex = eligibility(v, None, 70.0)
    assert ex is not None and ex.kind == "circuit_open" and ex.until == 90.0


def _best(views: list[KeyView], objective: str | Weights) -> str:
    return rank(views, "m", objective, 0.0, 1)[0][0]


def test_each_objective_prefers_the_right_key() -> None:
    base = KeyView("base", "p", default_price=DEAR, latency_ewma_s=1.0, success_ewma=0.95, quality=0.5)
    cheap = KeyView("cheap", "p", default_price=CHEAP, latency_ewma_s=1.0, success_ewma=0.95, quality=0.5)
    fast = KeyView("fast", "p", default_price=DEAR, latency_ewma_s=0.2, success_ewma=0.95, quality=0.5)
    steady = KeyView("steady", "p", default_price=DEAR, latency_ewma_s=1.0, success_ewma=1.0, quality=0.5)
    smart = KeyView("smart", "p", default_price=DEAR, latency_ewma_s=1.0, success_ewma=0.95, quality=1.0)
    busy = [
        KeyView(
            v.key_id,
            "p",
            default_price=v.default_price,
            latency_ewma_s=v.latency_ewma_s,
            success_ewma=v.success_ewma,
            quality=v.quality,
            recent_requests=50.0,
        )
        for v in (cheap, fast, steady, smart)
    ]
    views = [base, cheap, fast, steady, smart]
    assert _best(views, "cost") == "cheap"
    assert _best(views, "latency") == "fast"
    assert _best(views, "reliability") == "steady"
    assert _best(views, "quality") == "smart"
    assert _best([*busy, base], "fairness") == "base"
    assert _best(views, Weights(cost=1.0, latency=1.0)) in {"cheap", "fast"}


def test_predicted_exhaustion_scores_a_key_down() -> None:
    calm = KeyView("calm", "p", capacity_left=0.6)
    doomed = KeyView("doomed", "p", capacity_left=0.9, prediction=Prediction(10.0, True, 0.9))
    assert _best([calm, doomed], "reliability") == "calm"
    s = score(doomed, "m", OBJECTIVES["reliability"])
    assert s.explain().startswith(f"{s.value:.3f} = reliability 1.00*0.70 + headroom 0.21*0.20")


def test_identical_keys_take_turns_by_served_count() -> None:
    views = [KeyView(f"k{i}", "p", served=s) for i, s in enumerate([3, 1, 2])]
    assert [k for k, _ in rank(views, "m", "fairness", 0.0, 3)] == ["k1", "k2", "k0"]


def test_objectives_and_weights_validate() -> None:
    with pytest.raises(ValueError, match="unknown objective"):
        weights_for("cheapest")
    with pytest.raises(ValueError):
        Weights()
    with pytest.raises(ValueError):
        Weights(cost=-1.0)
    assert weights_for(Weights(cost=2.0)) == Weights(cost=2.0)


def test_stats_ewma_is_time_aware_with_a_floor() -> None:
    cfg = stats.StatsConfig(tau_s=10.0, min_alpha=0.1)
    s = stats.record(stats.Stats(), cfg, success=True, latency_s=2.0, now=0.0)
    assert (s.success_ewma, s.latency_ewma_s, s.requests) == (1.0, 2.0, 1)
    s = stats.record(s, cfg, success=False, latency_s=30.0, now=0.0)  # same instant: the floor
    assert s.success_ewma == pytest.approx(0.9) and s.latency_ewma_s == 2.0
    s = stats.record(s, cfg, success=True, latency_s=1.0, now=1000.0)  # long quiet: the sample dominates
    assert s.success_ewma == pytest.approx(1.0) and s.latency_ewma_s == pytest.approx(1.0)
    assert (s.requests, s.successes, s.failures) == (3, 2, 1)
    assert s.success_rate == pytest.approx(2 / 3)
