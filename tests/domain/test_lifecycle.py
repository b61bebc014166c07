"""Lifecycle: scenarios with exact times, and properties over random operation sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import lifecycle as lc_mod
from apikeyrouter.domain.failures import KeyEffect
from apikeyrouter.domain.lifecycle import (
    Cause,
    KeyState,
    Lifecycle,
    Transition,
    TransitionRefused,
    effective,
    refusal,
)


def test_throttle_ends_by_itself_and_is_audited_at_until() -> None:
    lc, events = lc_mod.throttle(Lifecycle(), until=130.0, reason="429 Retry-After 30s", now=100.0)
    assert lc.state is KeyState.THROTTLED and lc.until == 130.0
    assert events == [
        Transition(KeyState.ACTIVE, KeyState.THROTTLED, "429 Retry-After 30s", 100.0, Cause.FAILURE, 130.0)
    ]
    assert not lc.routable(129.999)
    assert lc.available_at(110.0) == 130.0
    later, events = effective(lc, 200.0)
    assert later.state is KeyState.ACTIVE
    assert events == [Transition(KeyState.THROTTLED, KeyState.ACTIVE, "throttle ended", 130.0, Cause.CLOCK)]
    assert [t.to_state for t in later.history] == [KeyState.THROTTLED, KeyState.ACTIVE]


def test_throttle_extends_never_shortens_and_exhaustion_outranks_it() -> None:
    lc, _ = lc_mod.throttle(Lifecycle(), until=130.0, reason="a", now=100.0)
    same, events = lc_mod.throttle(lc, until=120.0, reason="b", now=101.0)
    assert same == lc and events == []
    lc, events = lc_mod.throttle(lc, until=140.0, reason="c", now=102.0)
    assert lc.until == 140.0 and len(events) == 1
    lc, _ = lc_mod.exhaust(lc, until=135.0, reason="quota", now=103.0)
    assert lc.state is KeyState.EXHAUSTED and lc.until == 140.0
    lc, events = lc_mod.throttle(lc, until=150.0, reason="d", now=104.0)
    assert lc.state is KeyState.EXHAUSTED and lc.until == 150.0


def test_retry_after_zero_changes_nothing() -> None:
    lc, events = lc_mod.throttle(Lifecycle(), until=100.0, reason="429", now=100.0)
    assert lc == Lifecycle() and events == []


def test_invalid_key_comes_back_only_by_operator_and_rotation_keeps_history() -> None:
    lc, _ = lc_mod.invalidate(Lifecycle(), reason="401", now=10.0)
    assert lc.state is KeyState.INVALID and lc.available_at(1e9) is None
    still, events = lc_mod.throttle(lc, until=99.0, reason="429", now=11.0)
    assert still.state is KeyState.INVALID
    refused = refusal(events)
    assert refused is not None and refused.from_state is KeyState.INVALID
    lc, events = lc_mod.rotate(lc, reason="new material", now=20.0)
    assert lc.state is KeyState.ACTIVE and lc.rotations == 1
    assert [t.reason for t in lc.history] == ["401", "new material"]


def test_disable_enable_and_rotation_of_a_disabled_key() -> None:
    lc, _ = lc_mod.disable(Lifecycle(), reason="maintenance", now=1.0)
    lc, _ = lc_mod.rotate(lc, reason="rotated", now=2.0)
    assert lc.state is KeyState.DISABLED and lc.rotations == 1
    lc, events = lc_mod.enable(lc, reason="done", now=3.0)
    assert lc.state is KeyState.ACTIVE and events[-1].to_state is KeyState.ACTIVE
    assert lc_mod.enable(lc, reason="again", now=4.0) == (lc, [])


def test_revoked_is_terminal() -> None:
    lc, _ = lc_mod.revoke(Lifecycle(), reason="leaked", now=5.0)
    for op in (lc_mod.enable, lc_mod.disable, lc_mod.rotate, lc_mod.revoke, lc_mod.invalidate):
        new, events = op(lc, reason="x", now=6.0)
        assert new == lc
        assert isinstance(events[-1], TransitionRefused) and events[-1].why == "revoked is terminal"
    new, events = lc_mod.apply_effect(lc, KeyEffect.THROTTLE, until=60.0, reason="429", now=6.0)
    assert new == lc and refusal(events) is not None


def test_apply_effect_maps_the_failure_table() -> None:
    lc, _ = lc_mod.apply_effect(Lifecycle(), KeyEffect.EXHAUST, until=50.0, reason="quota", now=1.0)
    assert lc.state is KeyState.EXHAUSTED
    lc2, _ = lc_mod.apply_effect(Lifecycle(), KeyEffect.INVALIDATE, until=None, reason="401", now=1.0)
    assert lc2.state is KeyState.INVALID
    assert lc_mod.apply_effect(Lifecycle(), KeyEffect.NONE, until=None, reason="500", now=1.0) == (Lifecycle(), [])


_ops = st.one_of(
    st.tuples(st.just("throttle"), st.floats(0, 50)),
    st.tuples(st.just("exhaust"), st.floats(0, 50)),
    st.tuples(st.sampled_from(["invalidate", "disable", "enable", "rotate", "revoke", "look"]), st.just(0.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_ops, st.floats(0, 20)), max_size=30))
def test_never_leaves_revoked_and_every_change_is_audited(steps: list[tuple[tuple[str, float], float]]) -> None:
    lc, now, revoked = Lifecycle(), 0.0, False
    for (name, span), dt in steps:
        now += dt
        if name in ("throttle", "exhaust"):
            new, events = getattr(lc_mod, name)(lc, until=now + span, reason=name, now=now)
        elif name == "look":
            new, events = effective(lc, now)
        else:
            new, events = getattr(lc_mod, name)(lc, reason=name, now=now)
        moves = [e for e in events if isinstance(e, Transition)]
        # The audit trail chains: each record starts where the previous one ended.
        state = lc.state
        for move in moves:
            assert move.from_state is state
            assert (move.from_state, move.to_state) in lc_mod.ALLOWED
            assert move.cause in lc_mod.ALLOWED[(move.from_state, move.to_state)]
            state = move.to_state
        assert state is new.state
        assert new.transitions == lc.transitions + len(moves)
        if revoked:
            assert new.state is KeyState.REVOKED and not moves
        revoked = new.state is KeyState.REVOKED
        assert (new.until is not None) == new.state.timed
        lc = new
