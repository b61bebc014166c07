"""A provider's health: degraded when several of its keys fail server-side and nothing succeeds.

Rule: within the window (`window_s`), a provider is **degraded** when there is no success and at
least `min_failures` server-side failures (`SERVER_SIDE`: 5xx, overloaded, timeout, connection)
across at least `min_keys` distinct keys; it has **recovered** as soon as that no longer holds (a
success, or failures leaving the window). Other failures (rate limits, auth, caller faults) neither
count nor reset anything: they say nothing about the provider's servers. One key failing alone is
that key's problem (its breaker's); several keys failing together is the provider's, and the router
then scores the provider's keys down.

O(1) per call: the window is `buckets` time slots of `window_s / buckets` seconds (slot of a call =
floor(t / slot width)). Each slot keeps a success count, a server-side failure count and up to
`min_keys` failing key ids: enough to tell "at least `min_keys` distinct keys" exactly, since a
slot with fewer ids has all of them. A call adds to the newest slot; slots that left the window are
dropped from the front; the totals are kept alongside, so a verdict reads at most `buckets + 1`
small slots whatever the traffic.

Approximation (the only one): the window's edge moves a slot at a time. The slots counted at `now`
are those from floor(now / width) - buckets on, so a call counts for at least `window_s` and less
than `window_s + width` after it happened (default: 30 s, then gone by 33 s). A call is never
forgotten early; it may be remembered up to one slot width longer. Everything inside that band is
exact. (The previous scan kept only the last 64 calls, so under heavy traffic it forgot calls still
inside the window; the counters see every one.)

Time is lazy and the verdict is judged when a call is recorded, as the provider actor always did:
`effective(health, cfg, now)` ages the slots and re-judges at `now`; `on_call` applies it, adds the
call and judges once. A change of verdict yields one event dated `now`.
"""

from __future__ import annotations

import math

import attrs

from apikeyrouter.domain.failures import FailureClass

__all__ = [
    "SERVER_SIDE",
    "HealthConfig",
    "HealthEvent",
    "HealthSlot",
    "ProviderDegraded",
    "ProviderHealth",
    "ProviderRecovered",
    "ProviderSnapshot",
    "effective",
    "on_call",
]

SERVER_SIDE = frozenset(
    {FailureClass.SERVER_ERROR, FailureClass.OVERLOADED, FailureClass.TIMEOUT, FailureClass.CONNECTION}
)


@attrs.frozen
class HealthConfig:
    window_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    min_failures: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    min_keys: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    buckets: int = attrs.field(default=10, validator=attrs.validators.ge(1))  # slots across the window

    @property
    def slot_s(self) -> float:
        return self.window_s / self.buckets


@attrs.frozen
class HealthSlot:
    slot: int  # floor(t / cfg.slot_s) of the calls it holds
    successes: int = 0
    failures: int = 0  # server-side ones
    keys: frozenset[str] = frozenset()  # failing key ids, at most cfg.min_keys of them


@attrs.frozen
class ProviderHealth:
    slots: tuple[HealthSlot, ...] = ()  # oldest first, at most cfg.buckets + 1
    successes: int = 0  # totals over `slots`
    failures: int = 0
    degraded: bool = False
    reason: str = ""  # why it is degraded; "" when healthy
    since: float | None = None  # when the current verdict was reached (None: never degraded)


@attrs.frozen
class ProviderDegraded:
    at: float
    reason: str
    failures: int


@attrs.frozen
class ProviderRecovered:
    at: float


HealthEvent = ProviderDegraded | ProviderRecovered


def _slot(t: float, cfg: HealthConfig) -> int:
    return math.floor(t / cfg.slot_s)


def _distinct_keys(h: ProviderHealth, cfg: HealthConfig) -> int:
    """Distinct failing keys in the window, counted up to `cfg.min_keys` (exact below that)."""
    seen: set[str] = set()
    for s in h.slots:
        seen |= s.keys
        if len(seen) >= cfg.min_keys:
            return len(seen)
    return len(seen)


def _judge(h: ProviderHealth, cfg: HealthConfig, now: float) -> tuple[ProviderHealth, list[HealthEvent]]:
    degraded = h.successes == 0 and h.failures >= cfg.min_failures and _distinct_keys(h, cfg) >= cfg.min_keys
    if degraded == h.degraded:
        return h, []
    if not degraded:
        return attrs.evolve(h, degraded=False, reason="", since=now), [ProviderRecovered(at=now)]
    reason = (
        f"{h.failures} server-side failures across at least {cfg.min_keys} keys"
        f" in the last {cfg.window_s:g}s, no success"
    )
    new = attrs.evolve(h, degraded=True, reason=reason, since=now)
    return new, [ProviderDegraded(at=now, reason=reason, failures=h.failures)]


def _age(h: ProviderHealth, cfg: HealthConfig, now: float) -> ProviderHealth:
    first = _slot(now, cfg) - cfg.buckets
    slots = h.slots
    if not slots or slots[0].slot >= first:
        return h
    gone = 0
    successes, failures = h.successes, h.failures
    while gone < len(slots) and slots[gone].slot < first:
        successes -= slots[gone].successes
        failures -= slots[gone].failures
        gone += 1
    return attrs.evolve(h, slots=slots[gone:], successes=successes, failures=failures)


def effective(h: ProviderHealth, cfg: HealthConfig, now: float) -> tuple[ProviderHealth, list[HealthEvent]]:
    """The health as of `now`: calls that left the window are forgotten and the verdict re-judged."""
    return _judge(_age(h, cfg, now), cfg, now)


def on_call(
    h: ProviderHealth, cfg: HealthConfig, key_id: str, failure: FailureClass | None, now: float
) -> tuple[ProviderHealth, list[HealthEvent]]:
    """Record one finished call of `key_id` (`failure` None: a success) and judge the provider at `now`."""
    h = _age(h, cfg, now)
    if failure is not None and failure not in SERVER_SIDE:
        return _judge(h, cfg, now)
    success, failed = (1, 0) if failure is None else (0, 1)
    slots = h.slots
    slot = _slot(now, cfg)
    if slots and slots[-1].slot >= slot:  # the newest slot (or a clock that did not move forward)
        last, slots = slots[-1], slots[:-1]
    else:
        last = HealthSlot(slot=slot)
    keys = last.keys
    if failed and len(keys) < cfg.min_keys and key_id not in keys:
        keys = keys | {key_id}
    last = HealthSlot(last.slot, last.successes + success, last.failures + failed, keys)
    # Built directly (not `attrs.evolve`): once per upstream call.
    h = ProviderHealth((*slots, last), h.successes + success, h.failures + failed, h.degraded, h.reason, h.since)
    return _judge(h, cfg, now)


@attrs.frozen
class ProviderSnapshot:
    id: str
    kind: str
    degraded: bool
    reason: str
    in_flight: int
    requests: int
    failures: int
    models: frozenset[str]
    at: float
