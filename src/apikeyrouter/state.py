"""JSON views of key snapshots and transitions: the shapes `/state`, `/keys`, the debug channel and
`inspect` show (see api.py). Never key material: ids and fingerprints only. Wall times are
`render_wall` (ISO-8601 UTC with milliseconds), like every other rendered time."""

from __future__ import annotations

import math
from typing import Any

from apikeyrouter.actors.key import KeySnapshot
from apikeyrouter.domain.lifecycle import KeyState, Transition
from apikeyrouter.observe.events import render_wall, transition_fields

__all__ = ["key_json", "transition_json", "wall_iso"]


def wall_iso(t: float | None, wall_offset: float) -> str | None:
    """A trio time as an ISO-8601 UTC wall-clock string, for humans (None stays None)."""
    return None if t is None else render_wall(t, wall_offset)


def key_json(snap: KeySnapshot, now: float, wall_offset: float) -> dict[str, Any]:
    lc = snap.lifecycle
    state = lc.state
    if state.timed and lc.until is not None and now >= lc.until:
        state = KeyState.ACTIVE  # the bench has ended; the actor publishes the transition lazily
    b = snap.breaker
    pred = snap.prediction
    breaker_until = b.open_until if b.open_until is not None else b.probe_deadline
    seconds = pred.seconds_to_exhaustion
    return {
        "id": snap.id,
        "provider": snap.provider,
        "fingerprint": snap.fingerprint,
        "lifecycle": state.value,
        "lifecycle_until": lc.until if state.timed else None,
        "lifecycle_until_wall": wall_iso(lc.until, wall_offset) if state.timed else None,
        "lifecycle_reason": lc.reason,
        "capacity": snap.capacity.state.value,
        "capacity_left_pct": round(snap.capacity.fraction_left * 100, 1),
        "prediction": {
            "seconds_to_exhaustion": None if seconds is None or math.isinf(seconds) else round(seconds, 1),
            "confidence": round(pred.confidence, 3),
            "window": pred.window,
        },
        "breaker": b.state.value,
        "breaker_until": breaker_until,
        "breaker_until_wall": wall_iso(breaker_until, wall_offset),
        "in_flight": snap.in_flight,
        "max_in_flight": snap.max_in_flight,
        "success_rate": round(snap.stats.success_ewma, 4),
        "latency_ms": None if snap.stats.latency_ewma_s is None else round(snap.stats.latency_ewma_s * 1000, 2),
        "spend": str(snap.spend),
        "budget": None if snap.budget is None else str(snap.budget),
        "requests": snap.stats.requests,
        "models": sorted(snap.models),
        "metadata": dict(snap.metadata),
        "limits": {name: limit for name, (_, limit) in snap.usage.items()},
        "usage": {name: used for name, (used, _) in snap.usage.items()},
        "restarts": snap.restarts,
    }


def transition_json(key_id: str, t: Transition, wall_offset: float) -> dict[str, Any]:
    """The same fields as a `key.transition` event (one encoding), without its `kind`."""
    return transition_fields(key_id, t, wall_offset)
