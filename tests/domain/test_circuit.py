"""Circuit breaker: a scenario with exact times, and the one-probe property under any interleaving."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import circuit
from apikeyrouter.domain.circuit import (
    Breaker,
    BreakerClosed,
    BreakerConfig,
    BreakerHalfOpened,
    BreakerOpened,
    BreakerState,
    ProbeAdmitted,
    ProbeReleased,
    ProbeTimedOut,
    Verdict,
)
from apikeyrouter.domain.failures import FailureClass

CFG = BreakerConfig(failure_threshold=3, cooldown=10.0, probe_deadline=5.0, backoff=2.0, max_cooldown=25.0)


def test_record_predicate_follows_the_failure_table() -> None:
    assert circuit.verdict(None) is Verdict.SUCCESS
    assert circuit.verdict(FailureClass.SERVER_ERROR) is Verdict.FAILURE
    assert circuit.verdict(FailureClass.TIMEOUT) is Verdict.FAILURE
    for ignored in (FailureClass.RATE_LIMITED, FailureClass.AUTH_INVALID, FailureClass.BAD_REQUEST):
        assert circuit.verdict(ignored) is Verdict.IGNORED


def test_flaky_key_opens_probes_once_after_cooldown_and_closes() -> None:
    b = Breaker()
    for t in (1.0, 2.0):
        b, events = circuit.record(b, CFG, FailureClass.SERVER_ERROR, now=t)
        assert events == []
    # Rate limits neither count nor reset the streak.
    b, _ = circuit.record(b, CFG, FailureClass.RATE_LIMITED, now=2.5)
    assert b.consecutive_failures == 2
    b, events = circuit.record(b, CFG, FailureClass.TIMEOUT, now=3.0)
    assert b.state is BreakerState.OPEN
    assert events == [BreakerOpened(at=3.0, until=13.0, reason="3 consecutive failures")]
    assert circuit.try_acquire(b, CFG, 12.9)[1] is False

    b, admitted, events = circuit.try_acquire(b, CFG, 20.0)
    assert admitted
    assert events == [BreakerHalfOpened(at=13.0), ProbeAdmitted(at=20.0, probe_id=1, deadline=25.0)]
    _, second, _ = circuit.try_acquire(b, CFG, 21.0)
    assert second is False
    # A late result from before the breaker opened does not decide anything.
    assert circuit.on_result(b, CFG, failed=False, now=21.5) == (b, [])
    b, events = circuit.on_result(b, CFG, failed=False, now=22.0, probe=b.probe_id)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0
    assert events == [BreakerClosed(at=22.0)]


def test_failed_probes_back_off_exponentially_up_to_the_cap() -> None:
    b = Breaker(state=BreakerState.OPEN, open_until=10.0, openings=1)
    b, _, _ = circuit.try_acquire(b, CFG, 10.0)
    b, events = circuit.on_result(b, CFG, failed=True, now=11.0, probe=b.probe_id)
    assert events == [BreakerOpened(at=11.0, until=31.0, reason="half-open probe failed")]
    b, _, _ = circuit.try_acquire(b, CFG, 31.0)
    b, events = circuit.on_result(b, CFG, failed=True, now=32.0, probe=b.probe_id)
    assert events[-1] == BreakerOpened(at=32.0, until=57.0, reason="half-open probe failed")  # capped at 25s


def test_probe_without_an_answer_times_out_and_reopens() -> None:
    b = Breaker(state=BreakerState.OPEN, open_until=10.0, openings=1)
    b, admitted, _ = circuit.try_acquire(b, CFG, 10.0)
    assert admitted
    stale_probe = b.probe_id
    b, events = circuit.effective(b, CFG, 16.0)
    assert events == [ProbeTimedOut(at=15.0, probe_id=1), BreakerOpened(15.0, 35.0, "half-open probe timed out")]
    # The timed-out probe's answer arrives later and changes nothing.
    b2, _, _ = circuit.try_acquire(b, CFG, 35.0)
    assert circuit.on_result(b2, CFG, failed=False, now=36.0, probe=stale_probe)[0] == b2


def test_cancelled_probe_frees_the_slot() -> None:
    b = Breaker(state=BreakerState.HALF_OPEN)
    b, admitted, _ = circuit.try_acquire(b, CFG, 1.0)
    assert admitted and b.probe_in_flight
    b, events = circuit.release(b, CFG, now=2.0, probe=b.probe_id)
    assert events == [ProbeReleased(at=2.0, probe_id=1)]
    assert not b.probe_in_flight and b.state is BreakerState.HALF_OPEN
    b, admitted, _ = circuit.try_acquire(b, CFG, 2.0)
    assert admitted and b.probe_id == 2


_step = st.one_of(
    st.tuples(st.just("acquire"), st.integers(0, 0)),
    st.tuples(st.sampled_from(["ok", "fail", "release"]), st.integers(0, 5)),
    st.tuples(st.just("wait"), st.integers(1, 30)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_step, max_size=60))
def test_at_most_one_probe_under_any_interleaving(steps: list[tuple[str, int]]) -> None:
    """An independent model tracks the live probe (admitted, not answered, not released, not overdue).

    The breaker may admit a probe only when the model has none live, and must refuse while one is.
    """
    cfg = BreakerConfig(failure_threshold=2, cooldown=5.0, probe_deadline=3.0)
    b, now = Breaker(), 0.0
    held: list[int | None] = []  # probe ids (None = an ordinary call admitted while closed)
    live: tuple[int, float] | None = None  # (probe id, deadline) per the model
    for op, arg in steps:
        if live is not None and now >= live[1]:
            live = None
        if op == "wait":
            now += arg
            b, _ = circuit.effective(b, cfg, now)
        elif op == "acquire":
            was_half_open = circuit.effective(b, cfg, now)[0].state is BreakerState.HALF_OPEN
            b, admitted, events = circuit.try_acquire(b, cfg, now)
            if was_half_open:
                assert admitted == (live is None)
            if admitted:
                probe = b.probe_id if was_half_open else None
                assert (probe is not None) == any(isinstance(e, ProbeAdmitted) for e in events)
                if probe is not None:
                    live = (probe, now + cfg.probe_deadline)
                held.append(probe)
        elif held:
            probe = held.pop(arg % len(held))
            if op == "release":
                b, _ = circuit.release(b, cfg, now=now, probe=probe)
            else:
                b, _ = circuit.on_result(b, cfg, failed=op == "fail", now=now, probe=probe)
            if live is not None and probe == live[0]:
                live = None
        if live is not None and now >= live[1]:
            live = None
        assert b.probe_in_flight == (live is not None)
        if b.probe_in_flight:
            assert b.state is BreakerState.HALF_OPEN and b.probe_deadline is not None and b.probe_deadline > now
            assert circuit.try_acquire(b, cfg, now)[1] is False
