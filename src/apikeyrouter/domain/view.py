"""From the pure states a key owns to what the router reads, and from a failure to a bench time.

`key_view` flattens a key's lifecycle, quota, breaker and stats — each made effective at `now` — into
the frozen `scoring.KeyView` that the key actor publishes and the router's `KeyIndex` ranks. Keeping
the mapping here (not in the actor) means the rules that decide what "exhausted until" or "breaker
until" mean for routing are tested with the machines that produce them.

`bench_until` answers "a failure of this kind happened: until when is the key out?" for the
lifecycle's THROTTLE/EXHAUST effects, preferring what the provider said over our own guesses.
"""

from __future__ import annotations

from collections.abc import Mapping

from apikeyrouter.domain import circuit, lifecycle, quota
from apikeyrouter.domain.circuit import Breaker, BreakerConfig, BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import KeyEffect
from apikeyrouter.domain.keystate import KeySnapshot
from apikeyrouter.domain.lifecycle import Lifecycle
from apikeyrouter.domain.live_quota import Figures
from apikeyrouter.domain.quota import CapacityState, Quota
from apikeyrouter.domain.scoring import KeyView
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.domain.stats import Stats

__all__ = ["QUALITY_TIERS", "bench_until", "key_view", "live_view", "quality_of", "snapshot_view"]

QUALITY_TIERS = {"low": 0.25, "basic": 0.25, "standard": 0.5, "high": 0.75, "premium": 1.0}


def quality_of(metadata: Mapping[str, str]) -> float:
    """A key's quality score from its `quality` metadata: a tier name or a number in [0, 1] (else 0.5)."""
    raw = metadata.get("quality")
    if raw is None:
        return 0.5
    if raw in QUALITY_TIERS:
        return QUALITY_TIERS[raw]
    try:
        return min(1.0, max(0.0, float(raw)))
    except ValueError:
        return 0.5


def key_view(
    *,
    key_id: str,
    provider: str,
    lc: Lifecycle,
    q: Quota,
    breaker: Breaker,
    breaker_cfg: BreakerConfig,
    stats: Stats,
    now: float,
    models: frozenset[str] = frozenset(),
    prices: Mapping[str, ModelPrice] | None = None,
    default_price: ModelPrice | None = None,
    in_flight: int = 0,
    in_flight_limit: int | None = None,
    retry_after_s: float | None = None,
    quality: float = 0.5,
    capacity: quota.Capacity | None = None,
    prediction: quota.Prediction | None = None,
) -> KeyView:
    """The key's view as of `now`. `retry_after_s` is the Retry-After behind a current throttle, if any.
    `capacity` and `prediction`, when the caller already has them for this quota at `now`, are used as
    they are (they are the costliest part of a view)."""
    if lc.until is not None:  # only a timed state can change by itself
        lc, _ = lifecycle.effective(lc, now)
    b = breaker
    if b.state is not BreakerState.CLOSED:  # a closed breaker stays closed whatever the time
        b, _ = circuit.effective(breaker, breaker_cfg, now)
    q = quota.effective(q, now)
    if capacity is None or prediction is None:
        capacity, prediction = quota.assess(q, now)
    cap = capacity
    retry_at = quota.available_at(q, 1, now) if cap.state is CapacityState.EXHAUSTED else None
    n_requests, _ = q.rate.decayed(q.config.rate_tau_s, now)
    # Positional, in field order (a test checks it against the keyword form): binding 25 keywords cost
    # three times the construction itself, and the router builds a view per changed key per decision.
    return KeyView(
        key_id,  # key_id
        provider,  # provider
        models,  # models
        prices if prices is not None else {},  # prices; may be a lazy table: not copied
        default_price,  # default_price
        lc.state,  # lifecycle
        lc.until,  # lifecycle_until
        lc.reason,  # lifecycle_reason
        retry_after_s if lc.state is lifecycle.KeyState.THROTTLED else None,  # retry_after_s
        b.state,  # breaker
        _breaker_until(b),  # breaker_until
        b.probe_in_flight,  # probe_in_flight
        in_flight,  # in_flight
        in_flight_limit,  # in_flight_limit
        cap.state,  # capacity
        cap.fraction_left,  # capacity_left
        cap.tightest,  # capacity_window
        retry_at,  # capacity_retry_at
        prediction,  # prediction
        stats.success_ewma,  # success_ewma
        stats.latency_ewma_s,  # latency_ewma_s
        n_requests,  # recent_requests
        stats.requests,  # served
        quality,  # quality
        now,  # at
    )


def snapshot_view(
    snap: KeySnapshot, prices: Mapping[str, ModelPrice], *, quality: float, degraded: bool = False
) -> KeyView:
    """The view of a published snapshot as of its own time: `key_view` of the snapshot's states with
    its assessed capacity and prediction, value for value (a test holds the two equal), built in one
    step because the router makes one per re-indexed key per decision. A `degraded` provider halves
    the key's reliability."""
    now = snap.at
    lc = snap.lifecycle
    if lc.until is not None:
        lc, _ = lifecycle.effective(lc, now)
    b = snap.breaker
    if b.state is not BreakerState.CLOSED:
        b, _ = circuit.effective(b, snap.breaker_config, now)
    q = quota.effective(snap.quota, now)
    cap, prediction = snap.assessed()
    stats = snap.stats
    n_requests, _ = q.rate.decayed(q.config.rate_tau_s, now)
    state = cap.state
    return KeyView(  # positional, in field order, as in `key_view`
        snap.id,
        snap.provider,
        snap.models,
        prices,
        None,  # default_price
        lc.state,
        lc.until,
        lc.reason,
        snap.retry_after_s if lc.state is lifecycle.KeyState.THROTTLED else None,
        b.state,
        _breaker_until(b),
        b.probe_in_flight,
        snap.in_flight,
        snap.max_in_flight,
        state,
        cap.fraction_left,
        cap.tightest,
        quota.available_at(q, 1, now) if state is CapacityState.EXHAUSTED else None,
        prediction,
        stats.success_ewma * 0.5 if degraded else stats.success_ewma,
        stats.latency_ewma_s,
        n_requests,
        stats.requests,
        quality,
        now,
    )


def live_view(
    key_id: str,
    provider: str,
    models: frozenset[str],
    prices: Mapping[str, ModelPrice],
    lc: Lifecycle,
    b: Breaker,
    breaker_cfg: BreakerConfig,
    quota_figures: Figures,
    stats: Stats,
    in_flight: int,
    in_flight_limit: int | None,
    retry_after_s: float | None,
    quality: float,
    degraded: bool,
    now: float,
) -> KeyView:
    """`snapshot_view` of the snapshot these states would make at `now`, with the quota's figures as
    `live_quota.figures` gives them (from a key's live windows: no frozen quota, no snapshot built): the
    key actor's index view, built when the router reads it (no test yet holds the two equal field by field:
    the routing and key tests exercise it end to end). Positional: it
    runs once per re-indexed key per decision."""
    if lc.until is not None:
        lc, _ = lifecycle.effective(lc, now)
    if b.state is not BreakerState.CLOSED:
        b, _ = circuit.effective(b, breaker_cfg, now)
    cap, prediction, n_requests, retry_at = quota_figures
    return KeyView(  # positional, in field order, as in `key_view`
        key_id,
        provider,
        models,
        prices,
        None,  # default_price
        lc.state,
        lc.until,
        lc.reason,
        retry_after_s if lc.state is lifecycle.KeyState.THROTTLED else None,
        b.state,
        _breaker_until(b),
        b.probe_in_flight,
        in_flight,
        in_flight_limit,
        cap.state,
        cap.fraction_left,
        cap.tightest,
        retry_at,
        prediction,
        stats.success_ewma * 0.5 if degraded else stats.success_ewma,
        stats.latency_ewma_s,
        n_requests,
        stats.requests,
        quality,
        now,
    )


def _breaker_until(b: Breaker) -> float | None:
    """When the breaker next lets a request through: its open period's end, or a probe's deadline."""
    if b.state is BreakerState.OPEN:
        return b.open_until
    if b.state is BreakerState.HALF_OPEN:
        return b.probe_deadline
    return None


def bench_until(
    effect: KeyEffect,
    *,
    signal: QuotaSignal | None,
    q: Quota,
    now: float,
    default_cooldown_s: float = 30.0,
) -> float | None:
    """Until when a THROTTLE or EXHAUST effect benches the key (None for the other effects).

    THROTTLE: the provider's Retry-After, else the soonest learned reset in the signal, else
    `default_cooldown_s`. EXHAUST: the latest of the signal's resets and the quota's own
    `available_at` for a minimal request, else `default_cooldown_s` (the provider said "quota gone"
    without saying until when; the next attempt after the cooldown will learn more).
    """
    if effect not in (KeyEffect.THROTTLE, KeyEffect.EXHAUST):
        return None
    s = signal or QuotaSignal()
    resets = [r for r in (s.reset_requests_s, s.reset_tokens_s) if r is not None and r > 0]
    if effect is KeyEffect.THROTTLE:
        if s.retry_after_s is not None and s.retry_after_s > 0:
            return now + s.retry_after_s
        return now + (min(resets) if resets else default_cooldown_s)
    candidates = [now + r for r in resets]
    if s.retry_after_s is not None and s.retry_after_s > 0:
        candidates.append(now + s.retry_after_s)
    own = quota.available_at(q, 1, now)
    if own is not None and own > now:
        candidates.append(own)
    return max(candidates) if candidates else now + default_cooldown_s
