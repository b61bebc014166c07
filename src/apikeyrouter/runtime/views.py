"""Every JSON view of the running router, and its wall-clock rendering, in one place: the shapes `/state`,
`/keys`, the debug channel and `inspect` show (listed in runtime/api.py). Never key material: ids and
fingerprints only."""

from __future__ import annotations

import math
from typing import Any

import attrs

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.domain.health import ProviderSnapshot
from apikeyrouter.domain.keystate import KeySnapshot
from apikeyrouter.domain.lifecycle import KeyState, Transition
from apikeyrouter.domain.refusal import Refusal, explain
from apikeyrouter.domain.scoring import Weights
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.observe.events import render_wall, transition_fields

__all__ = [
    "key_json",
    "keys_json",
    "provider_json",
    "refusal_json",
    "state_summary",
    "transition_json",
    "transitions_json",
    "tree_to_json",
    "wall_iso",
]


def wall_iso(t: float | None, wall_offset: float) -> str | None:
    """A trio time as an ISO-8601 UTC wall-clock string, for humans."""
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


def tree_to_json(node: TreeNode) -> dict[str, Any]:
    mailbox = (
        {"depth": node.mailbox_depth, "capacity": node.mailbox_capacity} if node.mailbox_capacity is not None else None
    )
    return {
        "name": node.name,
        "kind": node.kind,
        "status": node.status,
        "restarts": node.restarts,
        "mailbox": mailbox,
        "last_crash": node.last_crash,
        "children": [tree_to_json(c) for c in node.children],
    }


def provider_json(p: ProviderSnapshot) -> dict[str, Any]:
    return {
        "id": p.id,
        "kind": p.kind,
        "degraded": p.degraded,
        "reason": p.reason,
        "in_flight": p.in_flight,
        "requests": p.requests,
        "failures": p.failures,
    }


def keys_json(board: SnapshotBoard, now: float, wall_offset: float) -> list[dict[str, Any]]:
    return [key_json(s, now, wall_offset) for s in sorted(board.keys.values(), key=lambda s: s.id)]


def transitions_json(snap: KeySnapshot | None, limit: int, wall_offset: float) -> list[dict[str, Any]]:
    if snap is None or limit <= 0:
        return []
    return [transition_json(snap.id, t, wall_offset) for t in snap.lifecycle.history[-limit:]]


def refusal_json(r: Refusal, wall_offset: float) -> dict[str, Any]:
    """A typed refusal for JSON readers: its fields plus the sentence it renders to."""
    return {
        "key": r.key_id,
        "kind": r.kind.value,
        "retry_at": r.retry_at,
        "retry_at_wall": wall_iso(r.retry_at, wall_offset),
        "busy": r.busy,
        "budget": r.budget,
        "reason": explain(r, wall_offset),
    }


def state_summary(
    *,
    running: bool,
    ready: bool,
    objective: str | Weights,
    max_attempts: int,
    providers: list[ProviderSnapshot],
    keys: list[dict[str, Any]],
    budgets: dict[str, Any],
    tree: TreeNode,
) -> dict[str, Any]:
    return {
        "running": running,
        "ready": ready,
        "objective": objective if isinstance(objective, str) else attrs.asdict(objective),
        "max_attempts": max_attempts,
        "providers": [provider_json(p) for p in sorted(providers, key=lambda p: p.id)],
        "keys": keys,
        "budgets": budgets,
        "in_flight": sum(k["in_flight"] for k in keys),
        "tree": tree_to_json(tree),
    }
