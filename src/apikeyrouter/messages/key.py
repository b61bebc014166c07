"""KeyActor protocol: reserve / settle / release a request's share of a key, operator commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import attrs

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.refusal import Refusal
from apikeyrouter.domain.request import Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.kernel.actor import Reply
from apikeyrouter.secret import Secret

__all__ = [
    "ApplyShared",
    "Granted",
    "InjectCrash",
    "KeyCommand",
    "Operate",
    "Outcome",
    "Release",
    "Reserve",
    "Settle",
    "Wake",
]


@attrs.frozen
class Reserve:
    """Ask for an in-flight slot, `tokens` of quota and `worst_case_cost` of budget, until `lease_until`.
    Answered with `Granted` or a `Refusal` (the key's state moved on since the router's snapshot)."""

    request_id: str
    model: str
    tokens: int
    worst_case_cost: Decimal
    lease_until: float
    reply_to: Reply[Granted | Refusal]


@attrs.frozen
class Granted:
    key_id: str
    reservation_id: int
    secret: Secret  # the key material, handed to the dispatch task for this one call
    probe: int | None  # the half-open probe id, when this call is the breaker's probe
    # The key has an in-flight limit: settle with an ask (`Settle.reply_to`), so the caller's next request
    # is decided on the key with this call's slot free again. Other keys are settled with a tell.
    confirm_settle: bool = False


@attrs.frozen
class Outcome:
    """What happened upstream. `failure` None means success."""

    failure: FailureClass | None
    usage: Usage | None = None
    cost: Decimal = Decimal(0)
    latency_s: float | None = None
    signal: QuotaSignal | None = None
    retry_after: float | None = None
    message: str = ""
    provider_degraded: bool = False  # the provider as a whole is failing: don't blame this key's breaker


@attrs.frozen
class Settle:
    """Account for a finished call. `reply_to`, when given, is answered once the outcome is in the
    key's state (and its snapshot published): a caller that waits for it has its next request decided
    on the key as it is after this call, not on a snapshot still showing this call in flight."""

    reservation_id: int
    outcome: Outcome
    reply_to: Reply[None] | None = None


@attrs.frozen
class Release:
    """The call never produced an outcome (the caller was cancelled before sending, or gave up).
    `reply_to`, when given, is answered once the reservation is given back (as for `Settle`)."""

    reservation_id: int
    reason: str = "cancelled"
    reply_to: Reply[None] | None = None


@attrs.frozen
class Operate:
    """Operator command. `secret` only for rotate. Replies with None or the refusal's reason."""

    action: Literal["disable", "enable", "revoke", "rotate"]
    reason: str
    reply_to: Reply[str | None]
    secret: Secret | None = None


@attrs.frozen
class Wake:
    """Internal: a bench or breaker cooldown has ended; apply the transition now (sent by the key's timer)."""


@attrs.frozen
class InjectCrash:
    """Chaos/testing: make the actor crash (its supervisor restarts it with its stored state)."""

    reason: str = "injected crash"


@attrs.frozen
class ApplyShared:
    """Another instance sharing this key on Redis benched it until `until` (its breaker opened, or it was
    throttled or exhausted: here it is throttled until then), found it invalid, revoked it, or put it back
    ("active"). Applied to the lifecycle like a local change, so this instance routes around it too."""

    state: Literal["throttled", "invalid", "revoked", "active"]
    reason: str
    until: float | None = None


KeyCommand = Reserve | Settle | Release | Operate | Wake | InjectCrash | ApplyShared
