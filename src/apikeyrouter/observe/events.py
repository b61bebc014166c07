"""Every observable happening, as a closed union of frozen attrs classes, and its one JSON encoding.

`Event` is the union; each class names its `kind` (the string a subscriber filters on, by kind or by
its prefix before the dot: `"key"` matches `key.transition`, `key.breaker` and `key.registered`).
Fields are typed values — ids, enums, `Decimal`, trio-clock `float` times — never JSON and never key
material: no event field is (or contains) a `Secret`, ids and fingerprints only.

Where a rule in `domain/` already returns a typed event (a lifecycle `Transition`, a breaker change,
a `BudgetOverrun`, a `HoldExpired`), the event is a thin envelope around it that adds what the rule does not know
(the key id).

`event_json(event, wall_offset)` is the only encoding: the debug channel's stream, the logs and any
later dashboard use it. Every time appears twice, as the trio-clock number (`at`, `until`, ...; the
debug channel's `now` is on the same clock) and as `<name>_wall`, ISO-8601 UTC with milliseconds
(`render_wall`, the one rendering used by `/keys`, `/state` and transitions too).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, ClassVar, assert_never

import attrs

from apikeyrouter.domain.budget import BudgetOverrun, BudgetSoftExceeded, HoldExpired
from apikeyrouter.domain.circuit import (
    BreakerClosed,
    BreakerEvent,
    BreakerHalfOpened,
    BreakerOpened,
    ProbeAdmitted,
    ProbeReleased,
    ProbeTimedOut,
)
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.lifecycle import Transition
from apikeyrouter.domain.walltime import render_wall

__all__ = [
    "EVENT_TYPES",
    "KINDS",
    "BudgetHoldExpired",
    "BudgetOverran",
    "BudgetSoftExceededEvent",
    "ConfigReloaded",
    "Event",
    "KeyBreakerChanged",
    "KeyRegistered",
    "KeyTransitioned",
    "ProviderHealthChanged",
    "RequestAttempted",
    "SupervisorChildCrashed",
    "SupervisorChildRestarted",
    "SupervisorEscalated",
    "attempt_fields",
    "event_json",
    "render_wall",
    "unknown_kinds",
]


@attrs.frozen
class KeyRegistered:
    kind: ClassVar[str] = "key.registered"
    key: str
    provider: str
    at: float


@attrs.frozen
class KeyTransitioned:
    """A key's lifecycle moved (the domain's audit record, with the key it belongs to)."""

    kind: ClassVar[str] = "key.transition"
    key: str
    transition: Transition

    @property
    def at(self) -> float:
        return self.transition.at


@attrs.frozen
class KeyBreakerChanged:
    """A key's circuit breaker changed: opened, half-opened, admitted/released/timed out a probe, closed."""

    kind: ClassVar[str] = "key.breaker"
    key: str
    change: BreakerEvent

    @property
    def at(self) -> float:
        return self.change.at


@attrs.frozen
class RequestAttempted:
    """One upstream attempt of a request ended; `failure` is None for a success."""

    kind: ClassVar[str] = "request.attempt"
    request_id: str
    key: str
    provider: str
    attempt: int  # 1 for the first try, then one more per failover
    decision_id: str
    failure: FailureClass | None
    latency_s: float
    at: float
    client: str | None = None  # the caller's client id (never its token), when it gave one
    team: str | None = None  # the client's team, when it has one


@attrs.frozen
class ProviderHealthChanged:
    kind: ClassVar[str] = "provider.health"
    provider: str
    degraded: bool
    reason: str
    at: float


@attrs.frozen
class SupervisorChildCrashed:
    kind: ClassVar[str] = "supervisor.child_crashed"
    supervisor: str
    child: str
    reason: str  # "ExceptionType: message"
    restarts: int
    at: float


@attrs.frozen
class SupervisorChildRestarted:
    kind: ClassVar[str] = "supervisor.child_restarted"
    supervisor: str
    child: str
    restarts: int
    at: float


@attrs.frozen
class SupervisorEscalated:
    """Restarts exceeded the supervisor's intensity: it gives up and fails to its own parent."""

    kind: ClassVar[str] = "supervisor.escalated"
    supervisor: str
    child: str
    intensity: int
    at: float


def _ids(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ConfigReloaded:
    """A reload (SIGHUP) was applied: what changed, by id; `refused` holds steps the router declined."""

    kind: ClassVar[str] = "config.reloaded"
    at: float
    keys_added: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    keys_removed: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    keys_changed: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    providers_added: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    providers_removed: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    providers_changed: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    refused: tuple[str, ...] = attrs.field(default=(), converter=_ids)


@attrs.frozen
class BudgetOverran:
    """A settle billed more than its reserved worst case (the domain's `BudgetOverrun`)."""

    kind: ClassVar[str] = "budget.overrun"
    overrun: BudgetOverrun

    @property
    def at(self) -> float:
        return self.overrun.at


@attrs.frozen
class BudgetHoldExpired:
    """A budget hold's lease ended before its charge or free came (the domain's `HoldExpired`): its
    amount is free again, and its settlement was lost (the budget actor restarted, most likely)."""

    kind: ClassVar[str] = "budget.hold_expired"
    expired: HoldExpired

    @property
    def at(self) -> float:
        return self.expired.at


@attrs.frozen
class BudgetSoftExceededEvent:
    """A request was served past a soft budget's limit (the domain's `BudgetSoftExceeded`)."""

    kind: ClassVar[str] = "budget.soft_exceeded"
    exceeded: BudgetSoftExceeded
    client: str | None = None

    @property
    def at(self) -> float:
        return self.exceeded.at


Event = (
    KeyRegistered
    | KeyTransitioned
    | KeyBreakerChanged
    | RequestAttempted
    | ProviderHealthChanged
    | SupervisorChildCrashed
    | SupervisorChildRestarted
    | SupervisorEscalated
    | ConfigReloaded
    | BudgetOverran
    | BudgetHoldExpired
    | BudgetSoftExceededEvent
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(Event)
KINDS: frozenset[str] = frozenset(cls.kind for cls in EVENT_TYPES)
_PREFIXES = frozenset(kind.split(".", 1)[0] for kind in KINDS)


def unknown_kinds(kinds: Iterable[str]) -> list[str]:
    """The names in `kinds` that are neither an event kind nor a kind's prefix (a typo, most likely)."""
    return [k for k in kinds if k not in KINDS and k not in _PREFIXES]


# -- the one JSON encoding ------------------------------------------------------------------------------


def _time(name: str, t: float | None, wall_offset: float) -> dict[str, Any]:
    return {name: t, f"{name}_wall": None if t is None else render_wall(t, wall_offset)}


def event_json(event: Event, wall_offset: float) -> dict[str, Any]:
    """`{"kind", "at", "at_wall", <the event's fields>}`: JSON-ready (enums as values, money as strings)."""
    return {"kind": event.kind, **_time("at", event.at, wall_offset), **_fields(event, wall_offset)}


def transition_fields(key: str, t: Transition, wall_offset: float) -> dict[str, Any]:
    """A transition as `/keys/{id}`, the debug channel's `transitions` and `key.transition` events show it."""
    return {
        "key": key,
        "from": t.from_state.value,
        "to": t.to_state.value,
        "reason": t.reason,
        "cause": t.cause.value,
        **_time("at", t.at, wall_offset),
        **_time("until", t.until, wall_offset),
    }


def _fields(event: Event, off: float) -> dict[str, Any]:
    match event:
        case KeyRegistered(key=key, provider=provider):
            return {"key": key, "provider": provider}
        case KeyTransitioned(key=key, transition=t):
            return transition_fields(key, t, off)
        case KeyBreakerChanged(key=key, change=change):
            return {"key": key, "change": type(change).__name__, **_breaker_fields(change, off)}
        case RequestAttempted():
            return attempt_fields(event)
        case ProviderHealthChanged(provider=provider, degraded=degraded, reason=reason):
            return {"provider": provider, "degraded": degraded, "reason": reason}
        case SupervisorChildCrashed(supervisor=sup, child=child, reason=reason, restarts=restarts):
            return {"supervisor": sup, "child": child, "reason": reason, "restarts": restarts}
        case SupervisorChildRestarted(supervisor=sup, child=child, restarts=restarts):
            return {"supervisor": sup, "child": child, "restarts": restarts}
        case SupervisorEscalated(supervisor=sup, child=child, intensity=intensity):
            return {"supervisor": sup, "child": child, "intensity": intensity}
        case ConfigReloaded():
            return {f.name: list(getattr(event, f.name)) for f in attrs.fields(ConfigReloaded) if f.name != "at"}
        case BudgetOverran(overrun=o):
            return {"budget": o.budget, "over_by": _money(o.over_by), "hold_id": o.hold_id}
        case BudgetHoldExpired(expired=x):
            return {"hold_id": x.hold_id, "budgets": list(x.budgets), "amount": _money(x.amount)}
        case BudgetSoftExceededEvent(exceeded=x, client=client):
            return {
                "budget": x.budget,
                "limit": _money(x.limit),
                "spent": _money(x.spent),
                "reserved": _money(x.reserved),
                "requested": _money(x.requested),
                "hold_id": x.hold_id,
                "client": client,
            }
        case _:
            assert_never(event)


def _breaker_fields(change: BreakerEvent, off: float) -> dict[str, Any]:
    match change:
        case BreakerOpened(until=until, reason=reason):
            return {**_time("until", until, off), "reason": reason}
        case BreakerHalfOpened() | BreakerClosed():
            return {}
        case ProbeAdmitted(probe_id=probe_id, deadline=deadline):
            return {"probe_id": probe_id, **_time("deadline", deadline, off)}
        case ProbeReleased(probe_id=probe_id) | ProbeTimedOut(probe_id=probe_id):
            return {"probe_id": probe_id}
        case _:
            assert_never(change)


def _money(value: Decimal) -> str:
    return str(value)


def attempt_fields(event: RequestAttempted) -> dict[str, Any]:
    """An attempt's fields, as its log line and its JSON carry them."""
    return {
        "request_id": event.request_id,
        "client": event.client,
        "team": event.team,
        "key": event.key,
        "provider": event.provider,
        "attempt": event.attempt,
        "decision_id": event.decision_id,
        "outcome": "success" if event.failure is None else event.failure.value,
        "latency_ms": round(event.latency_s * 1000, 3),
    }
