"""A key's lifecycle: where it stands in rotation, with every move audited.

States::

    ACTIVE ──throttle──▶ THROTTLED(until) ──until passes──▶ ACTIVE
      │  ╲──exhaust───▶ EXHAUSTED(until) ──until passes──▶ ACTIVE
      │   ╲─invalidate▶ INVALID ──rotate / enable (operator)──▶ ACTIVE
      ├──disable (operator)──▶ DISABLED ──enable (operator)──▶ ACTIVE
      └──revoke (operator, from any state)──▶ REVOKED  (terminal)

The transition table `ALLOWED` is data; every public function checks it.

Time is lazy. Nothing ticks: `effective(lc, now)` returns the lifecycle as of `now`, turning an
expired THROTTLED/EXHAUSTED into ACTIVE and returning that transition (audited `at=until`, the moment
it became true, not the moment somebody looked). Every other function applies `effective` first, so
callers never need to.

Refusals are values, not exceptions. A refused move (enable a revoked key, throttle an invalid key)
leaves the state unchanged and returns exactly one `TransitionRefused` event. Results of requests
that were in flight when an operator acted race with those actions all the time (a 429 arriving for
a key revoked a moment ago); that is expected traffic, not a bug, so it must not raise. Actors that
answer an operator use `refusal(events)` to turn it into an error reply.

Every function returns `(new_lifecycle, events)`; every state change yields one `Transition`.
`Lifecycle.history` keeps the last `HISTORY_LIMIT` transitions for snapshots and the debug channel;
the full trail is the stream of `Transition` events, which the actor persists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from apikeyrouter.domain.failures import KeyEffect

__all__ = [
    "ALLOWED",
    "HISTORY_LIMIT",
    "Cause",
    "KeyState",
    "Lifecycle",
    "LifecycleEvent",
    "Transition",
    "TransitionRefused",
    "apply_effect",
    "disable",
    "effective",
    "enable",
    "exhaust",
    "invalidate",
    "refusal",
    "revoke",
    "rotate",
    "throttle",
]

HISTORY_LIMIT = 16


class KeyState(enum.Enum):
    ACTIVE = "active"
    THROTTLED = "throttled"
    EXHAUSTED = "exhausted"
    INVALID = "invalid"
    DISABLED = "disabled"
    REVOKED = "revoked"

    @property
    def timed(self) -> bool:
        """States that end by themselves when `until` passes."""
        return self in (KeyState.THROTTLED, KeyState.EXHAUSTED)


class Cause(enum.Enum):
    FAILURE = "failure"  # a classified upstream failure
    OPERATOR = "operator"  # a management action
    CLOCK = "clock"  # a timed state ran out


_A, _T, _E, _I, _D, _R = (
    KeyState.ACTIVE,
    KeyState.THROTTLED,
    KeyState.EXHAUSTED,
    KeyState.INVALID,
    KeyState.DISABLED,
    KeyState.REVOKED,
)

# (from, to) -> causes that may make that move. Same-state entries are extensions (a later `until`)
# or audited operator actions (rotating a disabled key keeps it disabled).
ALLOWED: Mapping[tuple[KeyState, KeyState], frozenset[Cause]] = {
    (_A, _T): frozenset({Cause.FAILURE}),
    (_A, _E): frozenset({Cause.FAILURE}),
    (_A, _I): frozenset({Cause.FAILURE}),
    (_A, _D): frozenset({Cause.OPERATOR}),
    (_A, _A): frozenset({Cause.OPERATOR}),  # rotate an active key
    (_T, _A): frozenset({Cause.CLOCK, Cause.OPERATOR}),
    (_T, _T): frozenset({Cause.FAILURE}),
    (_T, _E): frozenset({Cause.FAILURE}),
    (_T, _I): frozenset({Cause.FAILURE}),
    (_T, _D): frozenset({Cause.OPERATOR}),
    (_E, _A): frozenset({Cause.CLOCK, Cause.OPERATOR}),
    (_E, _E): frozenset({Cause.FAILURE}),
    (_E, _I): frozenset({Cause.FAILURE}),
    (_E, _D): frozenset({Cause.OPERATOR}),
    (_I, _A): frozenset({Cause.OPERATOR}),
    (_I, _D): frozenset({Cause.OPERATOR}),
    (_D, _A): frozenset({Cause.OPERATOR}),
    (_D, _D): frozenset({Cause.OPERATOR}),
    **{(s, _R): frozenset({Cause.OPERATOR}) for s in (_A, _T, _E, _I, _D)},
}


@attrs.frozen
class Transition:
    """An audit record: one move of one key's lifecycle. `at`/`until` are trio-clock seconds."""

    from_state: KeyState
    to_state: KeyState
    reason: str
    at: float
    cause: Cause
    until: float | None = None


@attrs.frozen
class TransitionRefused:
    """A move the table does not allow. The lifecycle is unchanged."""

    from_state: KeyState
    to_state: KeyState
    reason: str
    at: float
    why: str


LifecycleEvent = Transition | TransitionRefused


@attrs.frozen
class Lifecycle:
    state: KeyState = KeyState.ACTIVE
    until: float | None = None  # set only for THROTTLED / EXHAUSTED
    reason: str = ""
    since: float = 0.0
    rotations: int = 0
    transitions: int = 0  # total ever made (history keeps only the last few)
    history: tuple[Transition, ...] = ()

    def routable(self, now: float) -> bool:
        """May a request be sent with this key at `now`?"""
        return effective(self, now)[0].state is KeyState.ACTIVE

    def available_at(self, now: float) -> float | None:
        """When the key will be ACTIVE without an operator: `now` if it already is, None if never."""
        lc = effective(self, now)[0]
        if lc.state is KeyState.ACTIVE:
            return now
        return lc.until if lc.state.timed else None


def refusal(events: list[LifecycleEvent]) -> TransitionRefused | None:
    """The refusal among `events`, if the requested move was refused."""
    for event in events:
        if isinstance(event, TransitionRefused):
            return event
    return None


def _move(
    lc: Lifecycle,
    to: KeyState,
    *,
    reason: str,
    at: float,
    cause: Cause,
    until: float | None = None,
    rotated: bool = False,
) -> tuple[Lifecycle, Transition]:
    record = Transition(from_state=lc.state, to_state=to, reason=reason, at=at, cause=cause, until=until)
    new = attrs.evolve(
        lc,
        state=to,
        until=until,
        reason=reason,
        since=at,
        rotations=lc.rotations + (1 if rotated else 0),
        transitions=lc.transitions + 1,
        history=(*lc.history, record)[-HISTORY_LIMIT:],
    )
    return new, record


def _attempt(
    lc: Lifecycle,
    to: KeyState,
    *,
    reason: str,
    now: float,
    cause: Cause,
    until: float | None = None,
    rotated: bool = False,
) -> tuple[Lifecycle, list[LifecycleEvent]]:
    current, events = effective(lc, now)
    if cause not in ALLOWED.get((current.state, to), frozenset()):
        why = (
            "revoked is terminal"
            if current.state is KeyState.REVOKED
            else f"{current.state.value} -> {to.value} is not allowed for {cause.value}"
        )
        return current, [*events, TransitionRefused(current.state, to, reason, now, why)]
    new, record = _move(current, to, reason=reason, at=now, cause=cause, until=until, rotated=rotated)
    return new, [*events, record]


def effective(lc: Lifecycle, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """The lifecycle as of `now`: a timed state whose `until` has passed becomes ACTIVE."""
    if lc.state.timed and lc.until is not None and now >= lc.until:
        what = "throttle" if lc.state is KeyState.THROTTLED else "quota exhaustion"
        new, record = _move(lc, KeyState.ACTIVE, reason=f"{what} ended", at=lc.until, cause=Cause.CLOCK)
        return new, [record]
    return lc, []


def _bench(
    lc: Lifecycle, to: KeyState, *, until: float, reason: str, now: float
) -> tuple[Lifecycle, list[LifecycleEvent]]:
    current, events = effective(lc, now)
    if until <= now:
        # Already over (e.g. Retry-After: 0): nothing to record.
        return current, events
    if current.state.timed:
        # EXHAUSTED outranks THROTTLED; a bench never shortens an existing one.
        target = KeyState.EXHAUSTED if KeyState.EXHAUSTED in (current.state, to) else KeyState.THROTTLED
        assert current.until is not None
        if target is current.state and until <= current.until:
            return current, events
        until = max(until, current.until)
        to = target
    new, more = _attempt(current, to, reason=reason, now=now, cause=Cause.FAILURE, until=until)
    return new, [*events, *more]


def throttle(lc: Lifecycle, *, until: float, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Rate-limited: out of rotation until `until` (a later throttle extends, never shortens)."""
    return _bench(lc, KeyState.THROTTLED, until=until, reason=reason, now=now)


def exhaust(lc: Lifecycle, *, until: float, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Quota gone: out of rotation until the window resets at `until`."""
    return _bench(lc, KeyState.EXHAUSTED, until=until, reason=reason, now=now)


def invalidate(lc: Lifecycle, *, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Auth rejected: out of rotation until an operator rotates or enables the key."""
    current, events = effective(lc, now)
    if current.state is KeyState.INVALID:
        return current, events
    new, more = _attempt(current, KeyState.INVALID, reason=reason, now=now, cause=Cause.FAILURE)
    return new, [*events, *more]


def apply_effect(
    lc: Lifecycle, effect: KeyEffect, *, until: float | None, reason: str, now: float
) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Apply a failure's `KeyEffect` (from the failure table). `until` is required for THROTTLE/EXHAUST."""
    if effect is KeyEffect.NONE:
        return effective(lc, now)
    if effect is KeyEffect.INVALIDATE:
        return invalidate(lc, reason=reason, now=now)
    if until is None:
        raise ValueError(f"{effect.value} needs an `until` time")
    if effect is KeyEffect.THROTTLE:
        return throttle(lc, until=until, reason=reason, now=now)
    return exhaust(lc, until=until, reason=reason, now=now)


def disable(lc: Lifecycle, *, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Operator: take the key out of rotation. Disabling a disabled key updates the recorded reason."""
    return _attempt(lc, KeyState.DISABLED, reason=reason, now=now, cause=Cause.OPERATOR)


def enable(lc: Lifecycle, *, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Operator: put the key back into rotation (also lifts a throttle early). No-op if already active."""
    current, events = effective(lc, now)
    if current.state is KeyState.ACTIVE:
        return current, events
    new, more = _attempt(current, KeyState.ACTIVE, reason=reason, now=now, cause=Cause.OPERATOR)
    return new, [*events, *more]


def rotate(lc: Lifecycle, *, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Operator: new key material under the same id; history is kept and `rotations` counts up.

    Active, throttled, exhausted and invalid keys come back ACTIVE (the old material's troubles do
    not carry over); a disabled key stays DISABLED (the rotation is still audited).
    """
    current, events = effective(lc, now)
    to = KeyState.DISABLED if current.state is KeyState.DISABLED else KeyState.ACTIVE
    new, more = _attempt(current, to, reason=reason, now=now, cause=Cause.OPERATOR, rotated=True)
    return new, [*events, *more]


def revoke(lc: Lifecycle, *, reason: str, now: float) -> tuple[Lifecycle, list[LifecycleEvent]]:
    """Operator: permanently out of rotation. Refused (as a value) if already revoked."""
    return _attempt(lc, KeyState.REVOKED, reason=reason, now=now, cause=Cause.OPERATOR)
