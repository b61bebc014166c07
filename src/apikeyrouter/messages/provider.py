"""ProviderActor protocol. Upstream calls are not messages: the caller runs them in its own task on a
client leased from the actor (`ProviderActor.lease`), then tells the actor how the call ended."""

from __future__ import annotations

import attrs

from apikeyrouter.domain.failures import FailureClass

__all__ = ["CallEnded", "ProviderCommand"]


@attrs.frozen
class CallEnded:
    """One upstream call of `key_id` ended: `failure` None is a success. Feeds the provider's health."""

    key_id: str
    failure: FailureClass | None
    latency_s: float


ProviderCommand = CallEnded
