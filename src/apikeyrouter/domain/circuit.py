"""A per-key circuit breaker: closed → open → half-open (one probe, under a deadline) → closed | open.

Counting rule: **consecutive** counted failures. `failure_threshold` counted failures in a row open
the breaker; any success resets the count. We chose this over a failure-rate window because the
breaker's job here is narrow — stop hammering a key (or its upstream) that is down — while a key that
fails intermittently is already pushed down the ranking by its success EWMA (`stats.py`). Consecutive
counting also needs no window state and is exact to test.

Record predicate: only failure classes whose `FailureAction.counts_for_breaker` is true count
(overloaded, 5xx, timeout, connection). Rate limits, auth failures and caller faults are `IGNORED`:
they neither count as failures nor reset the streak. `verdict()` applies the table.

Half-open admits exactly one probe. `try_acquire` admits it and stamps `probe_deadline`; a second
acquire while it is out is refused. The probe ends by `on_result(..., probe=id)`, by `release(...)`
(the caller was cancelled: the slot is freed and the next acquire may probe), or — if neither arrives
— by the deadline passing, which counts as a failed probe and reopens the breaker. Each reopening
without a close in between multiplies the cooldown by `backoff` up to `max_cooldown`.

Probe identity: every admitted probe gets a new `probe_id` (read it from the returned breaker, or
from the `ProbeAdmitted` event). Results and releases pass `probe=` that id; a result without it (a
call admitted while the breaker was still closed) only feeds the closed-state streak, and a stale
probe id (that probe already timed out) is ignored. That is what keeps "exactly one probe" true under
any interleaving.

Time is lazy: `effective(breaker, cfg, now)` performs the open→half-open and probe-timeout moves whose
time has come, with the events dated when they became true.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import assert_never

import attrs

from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureAction, FailureClass

__all__ = [
    "Breaker",
    "BreakerClosed",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerHalfOpened",
    "BreakerOpened",
    "BreakerState",
    "ProbeAdmitted",
    "ProbeReleased",
    "ProbeTimedOut",
    "Verdict",
    "effective",
    "on_result",
    "record",
    "release",
    "try_acquire",
    "verdict",
]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Verdict(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@attrs.frozen
class BreakerConfig:
    failure_threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    cooldown: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    probe_deadline: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
    backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    max_cooldown: float = attrs.field(default=600.0, validator=attrs.validators.gt(0.0))

    def cooldown_for(self, reopenings: int) -> float:
        """Cooldown after the `reopenings`-th consecutive opening (1 = first)."""
        return min(self.cooldown * self.backoff ** max(reopenings - 1, 0), max(self.max_cooldown, self.cooldown))


@attrs.frozen
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    open_until: float | None = None  # OPEN: when it becomes half-open
    openings: int = 0  # consecutive openings without a close (drives the backoff)
    probe_id: int = 0  # id of the latest admitted probe
    probe_deadline: float | None = None  # HALF_OPEN with a probe out: its deadline; else None

    @property
    def probe_in_flight(self) -> bool:
        return self.probe_deadline is not None


@attrs.frozen
class BreakerOpened:
    at: float
    until: float
    reason: str


@attrs.frozen
class BreakerHalfOpened:
    at: float


@attrs.frozen
class ProbeAdmitted:
    at: float
    probe_id: int
    deadline: float


@attrs.frozen
class ProbeReleased:
    at: float
    probe_id: int


@attrs.frozen
class ProbeTimedOut:
    at: float
    probe_id: int


@attrs.frozen
class BreakerClosed:
    at: float


BreakerEvent = BreakerOpened | BreakerHalfOpened | ProbeAdmitted | ProbeReleased | ProbeTimedOut | BreakerClosed


def verdict(failure: FailureClass | None, table: Mapping[FailureClass, FailureAction] = DEFAULT_ACTIONS) -> Verdict:
    """The record predicate: None (a success) → SUCCESS; a failure counts only if its row says so."""
    if failure is None:
        return Verdict.SUCCESS
    return Verdict.FAILURE if table[failure].counts_for_breaker else Verdict.IGNORED


def _open(b: Breaker, cfg: BreakerConfig, *, at: float, reason: str) -> tuple[Breaker, BreakerOpened]:
    openings = b.openings + 1
    until = at + cfg.cooldown_for(openings)
    new = Breaker(
        state=BreakerState.OPEN,
        consecutive_failures=b.consecutive_failures,
        open_until=until,
        openings=openings,
        probe_id=b.probe_id,
    )
    return new, BreakerOpened(at=at, until=until, reason=reason)


def effective(b: Breaker, cfg: BreakerConfig, now: float) -> tuple[Breaker, list[BreakerEvent]]:
    """The breaker as of `now`: expired cooldowns half-open, overdue probes fail."""
    events: list[BreakerEvent] = []
    if b.state is BreakerState.CLOSED:
        return b, events  # the common case: a closed breaker has no timer
    # Each pass moves strictly forward in time (cooldown > 0), so this ends; at most three passes.
    while True:
        if b.state is BreakerState.OPEN and b.open_until is not None and now >= b.open_until:
            at = b.open_until
            b = attrs.evolve(b, state=BreakerState.HALF_OPEN, open_until=None)
            events.append(BreakerHalfOpened(at=at))
        elif b.state is BreakerState.HALF_OPEN and b.probe_deadline is not None and now >= b.probe_deadline:
            at = b.probe_deadline
            events.append(ProbeTimedOut(at=at, probe_id=b.probe_id))
            b, opened = _open(attrs.evolve(b, probe_deadline=None), cfg, at=at, reason="half-open probe timed out")
            events.append(opened)
        else:
            return b, events


def try_acquire(b: Breaker, cfg: BreakerConfig, now: float) -> tuple[Breaker, bool, list[BreakerEvent]]:
    """May a call go through now? Closed: yes. Open: no. Half-open: only if no probe is out.

    When the answer is a probe, the returned breaker's `probe_id` identifies it (also in the
    `ProbeAdmitted` event); pass it back to `on_result`/`release`.
    """
    b, events = effective(b, cfg, now)
    if b.state is BreakerState.CLOSED:
        return b, True, events
    if b.state is BreakerState.OPEN or b.probe_in_flight:
        return b, False, events
    probe_id = b.probe_id + 1
    deadline = now + cfg.probe_deadline
    b = attrs.evolve(b, probe_id=probe_id, probe_deadline=deadline)
    return b, True, [*events, ProbeAdmitted(at=now, probe_id=probe_id, deadline=deadline)]


def _is_current_probe(b: Breaker, probe: int | None) -> bool:
    return b.state is BreakerState.HALF_OPEN and b.probe_in_flight and probe == b.probe_id


def on_result(
    b: Breaker, cfg: BreakerConfig, *, failed: bool, now: float, probe: int | None = None
) -> tuple[Breaker, list[BreakerEvent]]:
    """Record a counted outcome (`failed` = a failure the record predicate counts; else a success)."""
    b, events = effective(b, cfg, now)
    if _is_current_probe(b, probe):
        if failed:
            b, opened = _open(attrs.evolve(b, probe_deadline=None), cfg, at=now, reason="half-open probe failed")
            return b, [*events, opened]
        return Breaker(probe_id=b.probe_id), [*events, BreakerClosed(at=now)]
    if b.state is not BreakerState.CLOSED or probe is not None:
        # A late result from before the breaker opened, or a probe that already timed out.
        return b, events
    if not failed:
        return (attrs.evolve(b, consecutive_failures=0) if b.consecutive_failures else b), events
    failures = b.consecutive_failures + 1
    b = attrs.evolve(b, consecutive_failures=failures)
    if failures >= cfg.failure_threshold:
        b, opened = _open(attrs.evolve(b, openings=0), cfg, at=now, reason=f"{failures} consecutive failures")
        return b, [*events, opened]
    return b, events


def release(
    b: Breaker, cfg: BreakerConfig, *, now: float, probe: int | None = None
) -> tuple[Breaker, list[BreakerEvent]]:
    """A call ended without a verdict (cancelled, or an IGNORED failure). Frees the probe slot if it was the probe."""
    b, events = effective(b, cfg, now)
    if _is_current_probe(b, probe):
        return attrs.evolve(b, probe_deadline=None), [*events, ProbeReleased(at=now, probe_id=b.probe_id)]
    return b, events


def record(
    b: Breaker,
    cfg: BreakerConfig,
    failure: FailureClass | None,
    *,
    now: float,
    probe: int | None = None,
    table: Mapping[FailureClass, FailureAction] = DEFAULT_ACTIONS,
) -> tuple[Breaker, list[BreakerEvent]]:
    """`on_result` or `release` per the record predicate: the one call an actor makes per outcome."""
    judged = verdict(failure, table)
    match judged:
        case Verdict.SUCCESS:
            return on_result(b, cfg, failed=False, now=now, probe=probe)
        case Verdict.FAILURE:
            return on_result(b, cfg, failed=True, now=now, probe=probe)
        case Verdict.IGNORED:
            return release(b, cfg, now=now, probe=probe)
        case _:
            assert_never(judged)
