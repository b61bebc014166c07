"""Failure classes and what each one means, as data.

Adapters classify a provider's answer into a `FailureClass`; this table says what the router
and the key do about it. Configuration may override any row (`override_table`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

__all__ = ["DEFAULT_ACTIONS", "FailureAction", "FailureClass", "KeyEffect", "override_table"]


class FailureClass(enum.Enum):
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    AUTH_INVALID = "auth_invalid"
    PERMISSION = "permission"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_POLICY = "content_policy"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    # Our side failed before or while sending: the adapter raised something it did not classify (a header
    # it cannot encode, a body it cannot serialise, a bug). Another key or provider may still work.
    ADAPTER_ERROR = "adapter_error"


class KeyEffect(enum.Enum):
    """What a failure means for the key that produced it."""

    NONE = "none"
    THROTTLE = "throttle"  # throttled until the provider's reset (Retry-After), or a default cooldown
    EXHAUST = "exhaust"  # exhausted until the quota window ends
    INVALIDATE = "invalidate"  # auth rejected: out of rotation until an operator rotates it


@attrs.frozen
class FailureAction:
    retry_other_key: bool
    counts_for_breaker: bool
    key_effect: KeyEffect
    caller_fault: bool = False


DEFAULT_ACTIONS: Mapping[FailureClass, FailureAction] = {
    FailureClass.RATE_LIMITED: FailureAction(True, False, KeyEffect.THROTTLE),
    FailureClass.QUOTA_EXHAUSTED: FailureAction(True, False, KeyEffect.EXHAUST),
    FailureClass.AUTH_INVALID: FailureAction(True, False, KeyEffect.INVALIDATE),
    FailureClass.PERMISSION: FailureAction(True, False, KeyEffect.NONE),
    FailureClass.BAD_REQUEST: FailureAction(False, False, KeyEffect.NONE, caller_fault=True),
    FailureClass.CONTEXT_LENGTH: FailureAction(False, False, KeyEffect.NONE, caller_fault=True),
    FailureClass.CONTENT_POLICY: FailureAction(False, False, KeyEffect.NONE, caller_fault=True),
    FailureClass.OVERLOADED: FailureAction(True, True, KeyEffect.NONE),
    FailureClass.SERVER_ERROR: FailureAction(True, True, KeyEffect.NONE),
    FailureClass.TIMEOUT: FailureAction(True, True, KeyEffect.NONE),
    FailureClass.CONNECTION: FailureAction(True, True, KeyEffect.NONE),
    FailureClass.ADAPTER_ERROR: FailureAction(True, True, KeyEffect.NONE),
}


def override_table(
    overrides: Mapping[FailureClass, FailureAction],
    base: Mapping[FailureClass, FailureAction] = DEFAULT_ACTIONS,
) -> dict[FailureClass, FailureAction]:
    table = dict(base)
    table.update(overrides)
    return table
