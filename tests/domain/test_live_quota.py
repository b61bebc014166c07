"""`LiveQuota` (the key actor's windows, changed in place) against the pure rules of `domain/quota.py`."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import quota
from apikeyrouter.domain.live_quota import LiveQuota
from apikeyrouter.domain.quota import CapacityState, QuotaConfig, QuotaReservation
from apikeyrouter.domain.signal import QuotaSignal

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

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 400)),
        st.tuples(st.just("settle"), st.tuples(st.integers(0, 400), st.none() | _signals)),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("wait"), st.floats(0, 200) | st.floats(0, 100_000)),
        st.tuples(st.just("signal"), _signals),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(_ops, st.sampled_from([QuotaConfig(rpm=20, tpm=2000, rpd=200, tokens_per_month=50_000), QuotaConfig()]))
def test_every_operation_in_place_equals_the_pure_rule(ops: list[tuple], cfg: QuotaConfig) -> None:
    """After any sequence of reservations, refusals, settlements (with and without headers), releases,
    signals and waits, the frozen value of the live windows is the pure rule's quota (as of now), and
    each refusal is the pure rule's refusal."""
    q, now = quota.new_quota(cfg, now=0.0), 0.0
    live = LiveQuota(q)
    held: list[tuple[QuotaReservation, QuotaReservation]] = []
    for op, arg in ops:
        if op == "wait":
            now += arg
        elif op == "signal":
            q = quota.apply_signal(q, arg, now)
            live.apply_signal(arg, now)
        elif op == "reserve":
            q, got = quota.reserve(q, arg, now)
            refused = live.refusal(arg, now)
            if isinstance(got, QuotaReservation):
                assert refused is None
                mine = live.take(arg, now)
                assert mine == got
                held.append((got, mine))
            else:
                assert refused == got
        elif held:
            pure_res, live_res = held.pop(0)
            if op == "settle":
                tokens, signal = arg
                q = quota.settle(q, pure_res, tokens, now, signal)
                live.settle(live_res, tokens, now, signal)
            else:
                q = quota.release(q, pure_res, now)
                live.release(live_res, now)
        frozen = live.freeze()
        assert quota.effective(frozen, now) == quota.effective(q, now)
        assert frozen.fresh_until == attrs.evolve(frozen).fresh_until  # the primed cache is what it computes
        assert [r.total for r in frozen.rings] == [sum(r.counts) for r in frozen.rings]
        assert quota.assess(frozen, now) == quota.assess(q, now)
        assert live.freeze() is frozen  # nothing changed: the same value
        cap, prediction = quota.assess(q, now)
        n_requests, _ = q.rate.decayed(cfg.rate_tau_s, now)
        retry_at = quota.available_at(q, 1, now) if cap.state is CapacityState.EXHAUSTED else None
        assert live.figures(now) == (cap, prediction, n_requests, retry_at)


def test_freeze_is_built_once_per_change() -> None:
    live = LiveQuota.new(QuotaConfig(rpm=10), 0.0)
    first = live.freeze()
    assert live.freeze() is first
    res = live.take(5, 1.0)
    second = live.freeze()
    assert second is not first and [r.total for r in second.rings] == [1, 5, 1, 5]
    assert first.rings[0].total == 0  # an earlier frozen value is not touched by later changes
    live.settle(res, 3, 2.0)
    assert [r.total for r in live.freeze().rings] == [1, 3, 1, 3]
    assert [r.total for r in second.rings] == [1, 5, 1, 5]


def test_a_refusal_says_why_and_a_negative_estimate_is_an_error() -> None:
    live = LiveQuota.new(QuotaConfig(rpm=1), 0.0)
    assert live.refusal(0, 0.0) is None
    live.take(0, 0.0)
    refused = live.refusal(0, 1.0)
    assert refused is not None and refused.window == "rpm" and refused.retry_at == pytest.approx(65.0)
    with pytest.raises(ValueError):
        live.refusal(-1, 1.0)
    with pytest.raises(ValueError):
        live.settle(QuotaReservation(0.0, 0, 0), -1, 1.0)
