"""The key view the router reads, built from the machines' own states, and bench times from failures."""

from __future__ import annotations

from decimal import Decimal

import attrs

from apikeyrouter.domain import circuit, lifecycle, quota, stats
from apikeyrouter.domain.circuit import Breaker, BreakerConfig, BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import KeyEffect
from apikeyrouter.domain.index import KeyIndex
from apikeyrouter.domain.keystate import KeySnapshot
from apikeyrouter.domain.lifecycle import KeyState, Lifecycle
from apikeyrouter.domain.quota import CapacityState, QuotaConfig, QuotaReservation
from apikeyrouter.domain.scoring import KeyView
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.domain.view import bench_until, key_view, snapshot_view

CFG = BreakerConfig(failure_threshold=1, cooldown=10.0, probe_deadline=5.0)


def _view(lc: Lifecycle, q: quota.Quota, b: Breaker, now: float, retry_after_s: float | None = None) -> KeyView:
    return key_view(
        key_id="k1",
        provider="openai",
        lc=lc,
        q=q,
        breaker=b,
        breaker_cfg=CFG,
        stats=stats.Stats(),
        now=now,
        retry_after_s=retry_after_s,
    )


def test_a_429_benches_the_key_in_the_index_until_retry_after() -> None:
    q = quota.new_quota(QuotaConfig(), now=0.0)
    signal = QuotaSignal(retry_after_s=30.0)
    until = bench_until(KeyEffect.THROTTLE, signal=signal, q=q, now=100.0)
    assert until == 130.0
    lc, _ = lifecycle.throttle(Lifecycle(), until=until, reason="429", now=100.0)
    q = quota.apply_signal(q, signal, 100.0)
    v = _view(lc, q, Breaker(), 100.0, retry_after_s=30.0)
    assert (v.lifecycle, v.lifecycle_until, v.retry_after_s, v.capacity) == (
        KeyState.THROTTLED,
        130.0,
        30.0,
        CapacityState.EXHAUSTED,
    )
    index = KeyIndex()
    index.update(v)
    assert index.top("m", "reliability", 129.0) == []
    assert index.earliest_available("m", 129.0) == 130.0
    assert [k for k, _ in index.top("m", "reliability", 130.0)] == ["k1"]


def test_breaker_and_quota_times_reach_the_view() -> None:
    q = quota.new_quota(QuotaConfig(rpm=1), now=0.0)
    q, res = quota.reserve(q, 0, 0.0)
    assert isinstance(res, QuotaReservation)
    b, _ = circuit.on_result(Breaker(), CFG, failed=True, now=1.0)
    v = _view(Lifecycle(), q, b, 2.0)
    assert (v.breaker, v.breaker_until) == (BreakerState.OPEN, 11.0)
    assert (v.capacity, v.capacity_window, v.capacity_retry_at) == (CapacityState.EXHAUSTED, "rpm", 65.0)
    b, admitted, _ = circuit.try_acquire(b, CFG, 12.0)
    v = _view(Lifecycle(), q, b, 12.0)
    assert admitted and v.probe_in_flight and v.breaker_until == 17.0


def test_exhaustion_waits_for_the_latest_reset_it_knows() -> None:
    q = quota.new_quota(QuotaConfig(), now=0.0)
    s = QuotaSignal(remaining_tokens=0, reset_tokens_s=90.0, reset_requests_s=5.0)
    assert bench_until(KeyEffect.EXHAUST, signal=s, q=q, now=10.0) == 100.0
    assert bench_until(KeyEffect.EXHAUST, signal=None, q=q, now=10.0) == 40.0
    assert bench_until(KeyEffect.THROTTLE, signal=s, q=q, now=10.0) == 15.0
    assert bench_until(KeyEffect.NONE, signal=s, q=q, now=10.0) is None


def test_each_figure_lands_in_its_own_field_of_the_view() -> None:
    """`key_view` builds the view positionally (for speed): every field here holds a value no other field
    could, and the result must equal the view spelled out field by field."""
    q = quota.new_quota(QuotaConfig(rpm=100, tpm=10_000), now=0.0)
    q, res = quota.reserve(q, 40, 1.0)
    assert isinstance(res, QuotaReservation)
    q = quota.settle(q, res, 25, 2.0)
    q, _ = quota.reserve(q, 10, 3.0)
    lc, _ = lifecycle.throttle(Lifecycle(), until=130.0, reason="429 from upstream", now=3.0)
    b, _ = circuit.on_result(Breaker(), CFG, failed=True, now=3.5)
    st = stats.record(stats.Stats(), stats.StatsConfig(), success=True, latency_s=0.25, now=2.0)
    st = stats.record(st, stats.StatsConfig(), success=False, latency_s=None, now=2.5)
    price = ModelPrice(Decimal("1.5"), Decimal("6"))
    view = key_view(
        key_id="k9",
        provider="prov",
        lc=lc,
        q=q,
        breaker=b,
        breaker_cfg=CFG,
        stats=st,
        now=4.0,
        models=frozenset({"m1"}),
        prices={"m1": price},
        default_price=ModelPrice(Decimal("2"), Decimal("3")),
        in_flight=3,
        in_flight_limit=9,
        retry_after_s=7.0,
        quality=0.75,
    )
    cap, prediction = quota.assess(q, 4.0)
    n_requests, _ = q.rate.decayed(q.config.rate_tau_s, 4.0)
    assert view == KeyView(
        key_id="k9",
        provider="prov",
        models=frozenset({"m1"}),
        prices={"m1": price},
        default_price=ModelPrice(Decimal("2"), Decimal("3")),
        lifecycle=KeyState.THROTTLED,
        lifecycle_until=130.0,
        lifecycle_reason="429 from upstream",
        retry_after_s=7.0,
        breaker=BreakerState.OPEN,
        breaker_until=13.5,
        probe_in_flight=False,
        in_flight=3,
        in_flight_limit=9,
        capacity=cap.state,
        capacity_left=cap.fraction_left,
        capacity_window="rpm",
        capacity_retry_at=None,
        prediction=prediction,
        success_ewma=st.success_ewma,
        latency_ewma_s=0.25,
        recent_requests=n_requests,
        served=2,
        quality=0.75,
        at=4.0,
    )
    assert 0.0 < n_requests < 1.0 and 0.0 < st.success_ewma < 1.0 and cap.fraction_left < 1.0


def _snapshot(q: quota.Quota, lc: Lifecycle, b: Breaker, st: stats.Stats, at: float) -> KeySnapshot:
    return KeySnapshot(
        id="k7",
        provider="prov",
        fingerprint="fp:0",
        models=frozenset({"m1"}),
        metadata={},
        lifecycle=lc,
        breaker=b,
        stats=st,
        in_flight=2,
        max_in_flight=5,
        spend=Decimal(0),
        reserved_cost=Decimal(0),
        budget=None,
        at=at,
        quota=q,
        breaker_config=CFG,
        retry_after_s=12.0,
    )


def test_a_snapshot_view_equals_the_view_of_the_same_states() -> None:
    """The router builds its views with `snapshot_view` (one step, the snapshot's cached assessment):
    the result must equal `key_view` of the same states, for an exhausted, throttled, tripped key and
    for a healthy one, with a degraded provider halving reliability only."""
    q = quota.new_quota(QuotaConfig(rpm=2), now=0.0)
    for t in (1.0, 2.0):
        q, res = quota.reserve(q, 10, t)
        assert isinstance(res, QuotaReservation)
        q = quota.settle(q, res, 8, t + 0.5)
    lc, _ = lifecycle.throttle(Lifecycle(), until=40.0, reason="429", now=3.0)
    b, _ = circuit.on_result(Breaker(), CFG, failed=True, now=3.0)
    st = stats.record(stats.Stats(), stats.StatsConfig(), success=False, latency_s=0.5, now=2.5)
    price = {"m1": ModelPrice(Decimal("1"), Decimal("2"))}
    for snap in (
        _snapshot(q, lc, b, st, 4.0),
        _snapshot(quota.new_quota(QuotaConfig(), 0.0), Lifecycle(), Breaker(), st, 4.0),
    ):
        expected = key_view(
            key_id="k7",
            provider="prov",
            lc=snap.lifecycle,
            q=snap.quota,
            breaker=snap.breaker,
            breaker_cfg=CFG,
            stats=st,
            now=4.0,
            models=frozenset({"m1"}),
            prices=price,
            in_flight=2,
            in_flight_limit=5,
            retry_after_s=12.0,
            quality=0.25,
        )
        assert snapshot_view(snap, price, quality=0.25) == expected
        degraded = snapshot_view(snap, price, quality=0.25, degraded=True)
        assert degraded == attrs.evolve(expected, success_ewma=expected.success_ewma * 0.5)
    assert expected.capacity is CapacityState.ABUNDANT


def test_a_snapshot_assesses_its_own_quota_once_and_a_changed_copy_its_new_one() -> None:
    used = quota.new_quota(QuotaConfig(rpm=1), now=0.0)
    used, _ = quota.reserve(used, 1, 1.0)
    snap = _snapshot(quota.new_quota(QuotaConfig(rpm=1), now=0.0), Lifecycle(), Breaker(), stats.Stats(), 2.0)
    assert snap.capacity.state is CapacityState.ABUNDANT
    assert snap.assessed() is snap.assessed()
    spent = attrs.evolve(snap, quota=used)
    assert spent.capacity.state is CapacityState.EXHAUSTED
    assert spent == attrs.evolve(snap, quota=used) and spent != snap
