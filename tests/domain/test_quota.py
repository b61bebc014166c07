"""Quota windows: exact-time scenarios, learned limits, capacity, prediction, and no-leak properties."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import quota
from apikeyrouter.domain.quota import CapacityState, QuotaConfig, QuotaRefusal, QuotaReservation
from apikeyrouter.domain.signal import QuotaSignal


def _reserve(q: quota.Quota, tokens: int, now: float) -> tuple[quota.Quota, QuotaReservation]:
    q, res = quota.reserve(q, tokens, now)
    assert isinstance(res, QuotaReservation), res
    return q, res


def test_rpm_refuses_the_fourth_request_until_the_first_bucket_slides_out() -> None:
    q = quota.new_quota(QuotaConfig(rpm=3), now=0.0)
    for t in (0.0, 1.0, 2.0):
        q, _ = _reserve(q, 10, t)
    q2, refusal = quota.reserve(q, 10, 3.0)
    assert q2 == q
    # 5 s buckets, 13 of them counted: the bucket [0, 5) stops counting at 65 s (never before 60 s).
    assert refusal == QuotaRefusal("rpm", "rpm limit 3 reached (3 used)", 65.0)
    assert quota.available_at(q, 10, 64.9) == 65.0
    assert quota.can_reserve(q, 10, 65.0) is None
    assert quota.earliest_reset(q, 30.0) == 65.0


def test_a_request_bigger_than_the_limit_never_fits() -> None:
    q = quota.new_quota(QuotaConfig(tpm=1000), now=0.0)
    refusal = quota.can_reserve(q, 1001, 0.0)
    assert refusal is not None and refusal.window == "tpm" and refusal.retry_at is None
    assert quota.available_at(q, 1001, 0.0) is None


def test_settle_replaces_the_estimate_and_release_undoes_exactly() -> None:
    q0 = quota.new_quota(QuotaConfig(tpm=10_000), now=0.0)
    q, res = _reserve(q0, 4000, 1.0)
    assert quota.usage(q, 1.0)["tpm"] == (4000, 10_000)
    settled = quota.settle(q, res, 1200, 2.0)
    assert quota.usage(settled, 2.0)["tpm"] == (1200, 10_000)
    assert quota.usage(settled, 2.0)["rpm"] == (1, None)
    assert quota.release(q, res, 2.0) == quota.effective(q0, 2.0)


def test_learned_remaining_counts_down_with_our_reservations_until_reset() -> None:
    q = quota.new_quota(QuotaConfig(), now=0.0)
    q = quota.apply_signal(q, QuotaSignal(limit_requests=100, remaining_requests=2, reset_requests_s=10.0), 5.0)
    q, first = _reserve(q, 0, 5.0)
    q, _ = _reserve(q, 0, 6.0)
    refusal = quota.can_reserve(q, 0, 7.0)
    assert refusal == QuotaRefusal("provider requests", "provider reports 0 requests remaining", 15.0)
    assert quota.capacity(q, 7.0).state is CapacityState.EXHAUSTED
    # Releasing gives the learned count back (same epoch)...
    assert quota.can_reserve(quota.release(q, first, 7.0), 0, 7.0) is None
    # ...but not after a fresh signal, which already accounts for it.
    fresh = quota.apply_signal(q, QuotaSignal(remaining_requests=0, reset_requests_s=3.0), 7.0)
    assert quota.can_reserve(quota.release(fresh, first, 7.5), 0, 7.5) is not None
    assert quota.can_reserve(q, 0, 15.0) is None


def test_learned_limit_tightens_the_configured_minute_window() -> None:
    q = quota.new_quota(QuotaConfig(rpm=500), now=0.0)
    q = quota.apply_signal(q, QuotaSignal(limit_requests=2, remaining_requests=2, reset_requests_s=1.0), 0.0)
    q, _ = _reserve(q, 0, 0.0)
    q, _ = _reserve(q, 0, 0.5)
    # The learned remaining has reset, but the learned limit still caps the rpm window.
    assert quota.usage(q, 2.0)["rpm"] == (2, 2)
    refusal = quota.can_reserve(q, 0, 2.0)
    assert refusal is not None and refusal.window == "rpm" and refusal.retry_at == 65.0


def test_retry_after_blocks_until_then() -> None:
    q = quota.apply_signal(quota.new_quota(QuotaConfig(), now=0.0), QuotaSignal(retry_after_s=30.0), 10.0)
    refusal = quota.can_reserve(q, 1, 20.0)
    assert refusal is not None and refusal.retry_at == 40.0
    assert quota.capacity(q, 20.0).state is CapacityState.EXHAUSTED
    assert quota.can_reserve(q, 1, 40.0) is None
    assert quota.effective(q, 40.0).blocked_until is None


@pytest.mark.parametrize(
    ("used", "state"),
    [
        (0, CapacityState.ABUNDANT),
        (50, CapacityState.CONSTRAINED),
        (86, CapacityState.CRITICAL),
        (100, CapacityState.EXHAUSTED),
    ],
)
def test_capacity_thresholds(used: int, state: CapacityState) -> None:
    q = quota.new_quota(QuotaConfig(rpm=100), now=0.0)
    for _ in range(used):
        q, _ = _reserve(q, 0, 1.0)
    cap = quota.capacity(q, 1.0)
    assert cap.state is state and cap.fraction_left == pytest.approx((100 - used) / 100)
    assert cap.tightest == "rpm"


def test_steady_traffic_predicts_exhaustion_and_turns_the_key_critical_before_the_429() -> None:
    q = quota.new_quota(QuotaConfig(rpd=1000, critical_horizon_s=600.0), now=0.0)
    p0 = quota.predict(q, 0.0)
    assert p0.seconds_to_exhaustion is None and p0.confidence == 0.0
    for t in range(180):
        q, res = _reserve(q, 0, float(t))
        q = quota.settle(q, res, 0, float(t))
    p = quota.predict(q, 180.0)
    assert p.window == "rpd" and p.exhausts_before_reset
    assert p.confidence > 0.99
    # Rate ~0.95/s (the EWMA lags a little behind 1/s), 820 requests left.
    assert p.seconds_to_exhaustion == pytest.approx(820 / 0.95, rel=0.05)
    cap = quota.capacity(q, 180.0)
    assert cap.fraction_left == pytest.approx(0.82) and cap.state is CapacityState.ABUNDANT
    # Same traffic, tighter horizon check: a key one minute from exhaustion is critical.
    for t in range(180, 800):
        q, res = _reserve(q, 0, float(t))
        q = quota.settle(q, res, 0, float(t))
    assert quota.capacity(q, 800.0).state is CapacityState.CRITICAL


def test_low_data_gives_low_confidence() -> None:
    q = quota.new_quota(QuotaConfig(rpm=10), now=0.0)
    q, res = _reserve(q, 0, 0.0)
    q = quota.settle(q, res, 0, 0.0)
    p = quota.predict(q, 1.0)
    # (1 - e^(-~1/5)) * (1/60)
    assert 0.0 < p.confidence < 0.01


_cfg = QuotaConfig(rpm=5, tpm=300, rpd=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 120), st.floats(0, 30)), max_size=25),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_reserve_then_release_in_any_order_leaves_no_trace(
    ops: list[tuple[int, float]], rnd: object, signal: bool
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    q0 = quota.new_quota(_cfg, now=0.0)
    if signal:
        q0 = quota.apply_signal(q0, QuotaSignal(limit_tokens=250, remaining_tokens=200, reset_tokens_s=1e6), 0.0)
    q, now, held = q0, 0.0, []
    for tokens, dt in ops:
        now += dt
        q, res = quota.reserve(q, tokens, now)
        if isinstance(res, QuotaReservation):
            held.append(res)
    rnd.shuffle(held)
    for res in held:
        q = quota.release(q, res, now)
    assert q == quota.effective(q0, now)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "release", "wait"]), st.integers(0, 150)), max_size=80))
def test_never_admits_more_than_a_limit_within_any_window(ops: list[tuple[str, int]]) -> None:
    q, now = quota.new_quota(_cfg, now=0.0), 0.0
    live: list[QuotaReservation] = []
    for op, n in ops:
        if op == "wait":
            now += n / 3.0
        elif op == "release" and live:
            q = quota.release(q, live.pop(n % len(live)), now)
        elif op == "reserve":
            q, res = quota.reserve(q, n, now)
            if isinstance(res, QuotaReservation):
                live.append(res)
                for spec in _cfg.windows:
                    in_window = [r for r in live if r.at >= now - spec.length_s]
                    amount = (
                        len(in_window) if spec.metric is quota.Metric.REQUESTS else sum(r.tokens for r in in_window)
                    )
                    assert spec.limit is None or amount <= spec.limit, spec.name


_signals = st.builds(
    QuotaSignal,
    limit_requests=st.none() | st.integers(0, 50),
    remaining_requests=st.none() | st.integers(-5, 50),
    limit_tokens=st.none() | st.integers(0, 3000),
    remaining_tokens=st.none() | st.integers(-5, 3000),
    reset_requests_s=st.none() | st.floats(0, 120),
    reset_tokens_s=st.none() | st.floats(0, 120),
    retry_after_s=st.none() | st.floats(0, 5),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("reserve"), st.integers(0, 400)),
            st.tuples(st.just("settle"), st.integers(0, 400)),
            st.tuples(st.just("release"), st.integers(0, 10)),
            st.tuples(st.just("wait"), st.floats(0, 200)),
            st.tuples(st.just("signal"), _signals),
        ),
        max_size=60,
    )
)
def test_the_one_pass_assessment_and_the_running_sums_agree_with_the_full_computation(ops: list[tuple]) -> None:
    """`assess` (what a snapshot shows) equals `capacity` and `predict` computed apart; each window's running
    total equals the sum of its buckets; a primed `fresh_until` is what a fresh value computes. Whatever
    the reservations, settlements, slides and signals."""
    cfg = QuotaConfig(rpm=20, tpm=2000, rpd=200, tokens_per_month=50_000)
    q, now = quota.new_quota(cfg, now=0.0), 0.0
    live: list[QuotaReservation] = []
    for op, arg in ops:
        if op == "wait":
            now += arg
        elif op == "signal":
            q = quota.apply_signal(q, arg, now)
        elif op == "reserve":
            q, res = quota.reserve(q, arg, now)
            if isinstance(res, QuotaReservation):
                live.append(res)
        elif live:
            res = live.pop(0)
            q = quota.settle(q, res, arg, now) if op == "settle" else quota.release(q, res, now)
        assert quota.assess(q, now) == (quota.capacity(q, now), quota.predict(q, now))
        assert q.fresh_until == attrs.evolve(q).fresh_until  # a primed cache holds what a fresh value computes
        slid = quota.effective(q, now)
        assert [ring.total for ring in slid.rings] == [sum(ring.counts) for ring in slid.rings]
        assert {name: used for name, (used, _) in quota.usage(q, now).items()} == {
            spec.name: sum(ring.counts) for spec, ring in zip(cfg.windows, slid.rings, strict=True)
        }


def test_a_signal_is_empty_only_when_it_says_nothing_at_all() -> None:
    """`empty` reads every field: one that says anything (a new field included) makes the signal count."""
    assert QuotaSignal().empty
    for field in attrs.fields(QuotaSignal):
        said = QuotaSignal(**{field.name: 0})
        assert not said.empty, field.name
        q = quota.new_quota(_cfg, now=0.0)
        assert quota.apply_signal(q, said, 1.0).epoch == 1, field.name  # each one is learned from


_maybe = st.one_of(st.none(), st.integers(0, 500))
_signals = st.builds(
    QuotaSignal,
    limit_requests=_maybe,
    remaining_requests=_maybe,
    limit_tokens=_maybe,
    remaining_tokens=_maybe,
    reset_requests_s=st.one_of(st.none(), st.floats(0.0, 90.0)),
    reset_tokens_s=st.one_of(st.none(), st.floats(0.0, 90.0)),
    retry_after_s=st.one_of(st.none(), st.floats(0.0, 30.0)),
)


@given(
    before=st.one_of(st.none(), _signals),
    signal=st.one_of(st.none(), _signals),
    estimate=st.integers(0, 300),
    actual=st.integers(0, 300),
    held_for=st.floats(0.0, 120.0),
)
@settings(max_examples=300, deadline=None)
def test_settling_with_the_headers_equals_settling_then_learning_from_them(
    before: QuotaSignal | None, signal: QuotaSignal | None, estimate: int, actual: int, held_for: float
) -> None:
    q = quota.new_quota(QuotaConfig(rpm=50, tpm=4000), now=0.0)
    if before is not None:  # learned counts of the reservation's epoch, decremented by the settlement
        q = quota.apply_signal(q, before, 0.0)
    q, res = quota.take(q, estimate, 1.0)
    now = 1.0 + held_for
    one_pass = quota.settle(q, res, actual, now, signal)
    two_steps = quota.settle(q, res, actual, now)
    if signal is not None:
        two_steps = quota.apply_signal(two_steps, signal, now)
    assert one_pass == two_steps
    assert one_pass.fresh_until == two_steps.fresh_until
