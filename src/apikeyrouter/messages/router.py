"""RouterActor protocol: decisions. Past decisions are read from the actor's retained frozen values
(`RouterActor.recent` / `lookup`), not through its mailbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.policy import EffectivePolicy
from apikeyrouter.domain.scoring import Weights
from apikeyrouter.kernel.actor import Reply

if TYPE_CHECKING:
    from apikeyrouter.domain.decision import RoutingDecision

__all__ = ["Decide", "RouterCommand"]


@attrs.frozen
class Decide:
    """Rank the keys that can serve `model` now. `exclude`: keys already tried by this request.
    `policy`: the request's effective policy (keys it excludes are left out, named in the decision);
    `client`: who asked, carried into the decision. `estimates`: the request's own estimates by provider
    (a reference to the dict the request path fills once a key is chosen), from which the decision tells
    its token counts when read (`RoutingDecision.tokens`)."""

    request_id: str
    model: str
    objective: str | Weights
    exclude: frozenset[str]
    reply_to: Reply[RoutingDecision]
    k: int = 3
    policy: EffectivePolicy | None = None
    client: str | None = None
    estimates: Mapping[str, CostEstimate] | None = None


RouterCommand = Decide
