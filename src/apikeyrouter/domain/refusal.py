"""Why a key (or a budget) said no to one request: a typed value, rendered as text only at the edge.

A `KeyActor` answers a `Reserve` with `Granted` or a `Refusal`; the `BudgetActor` answers a `Hold` with
None or a `Refusal`. The request path collects them as values, `NoKeyAvailable` / `BudgetExceeded` carry
them as fields, and `explain` turns one into a sentence for an error message, a decision's explanation or
an HTTP body. `detail` holds the data the sentence is made of (a model name, a limit, a lifecycle reason),
never the sentence itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import assert_never

import attrs

from apikeyrouter.domain.walltime import render_wall

__all__ = ["Refusal", "RefusalKind", "describe", "explain"]


class RefusalKind(enum.Enum):
    LIFECYCLE = "lifecycle"  # throttled / exhausted / invalid / disabled / revoked; detail: state, reason
    MODEL = "model"  # the key does not serve the model; detail: model
    IN_FLIGHT = "in_flight"  # at its in-flight limit (busy); detail: limit
    QUOTA = "quota"  # a window has no room for the request; detail: window, reason
    BREAKER = "breaker"  # open, or half-open with its probe in flight; detail: state
    BUDGET = "budget"  # a hard budget would be overspent; `budget` names it; detail: the amounts
    UNAVAILABLE = "unavailable"  # the key's actor is gone, restarting or did not answer; detail: error


@attrs.frozen
class Refusal:
    """`retry_at`: when the refusal may lift by itself (None: not by itself, or unknown). `busy`: it lifts
    when one of the key's calls ends, at no known time. `budget`: the budget id ("global",
    "provider:openai", "key:k1") for a budget refusal."""

    key_id: str
    kind: RefusalKind
    retry_at: float | None = None
    busy: bool = False
    budget: str | None = None
    detail: Mapping[str, object] = attrs.field(factory=dict, hash=False)


def _lifecycle(r: Refusal, wall_offset: float) -> str:
    state, reason = r.detail.get("state", "unavailable"), r.detail.get("reason", "")
    tail = f" ({reason})" if reason else ""
    if r.retry_at is not None:
        return f"{state} until {render_wall(r.retry_at, wall_offset)}{tail}"
    return f"{state}{tail}"


def _breaker(r: Refusal, wall_offset: float) -> str:
    if r.detail.get("state") == "open":
        until = "" if r.retry_at is None else f" until {render_wall(r.retry_at, wall_offset)}"
        return f"breaker open{until}"
    return "breaker half-open: its one probe is in flight"


def _budget(r: Refusal) -> str:
    d = r.detail
    return (
        f"budget {r.budget}: {d.get('requested')} requested, {d.get('available')} available "
        f"(limit {d.get('limit')}, spent {d.get('spent')}, reserved {d.get('reserved')})"
    )


def explain(r: Refusal, wall_offset: float = 0.0) -> str:
    """Why, as text: "throttled until 12:04:05 (rate_limited)", "budget global: 0.02 requested, ..."."""
    match r.kind:
        case RefusalKind.LIFECYCLE:
            why = _lifecycle(r, wall_offset)
        case RefusalKind.MODEL:
            why = f"does not serve model {r.detail.get('model')}"
        case RefusalKind.IN_FLIGHT:
            why = f"in-flight limit {r.detail.get('limit')} reached"
        case RefusalKind.QUOTA:
            why = f"{r.detail.get('window')}: {r.detail.get('reason')}"
        case RefusalKind.BREAKER:
            why = _breaker(r, wall_offset)
        case RefusalKind.BUDGET:
            why = _budget(r)
        case RefusalKind.UNAVAILABLE:
            why = f"unavailable ({r.detail.get('error', 'no answer')})"
        case _:
            assert_never(r.kind)
    return why


def describe(r: Refusal, wall_offset: float = 0.0) -> str:
    """The refusal with the key it came from: "k1: in-flight limit 1 reached"."""
    return f"{r.key_id}: {explain(r, wall_offset)}"
