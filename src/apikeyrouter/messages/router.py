"""RouterActor protocol: decisions, and reading back past decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from apikeyrouter.actors.base import Reply
from apikeyrouter.domain.scoring import Weights

if TYPE_CHECKING:
    from apikeyrouter.actors.router import RoutingDecision

__all__ = ["Decide", "GetDecision", "RecentDecisions", "RouterCommand"]


@attrs.frozen
class Decide:
    """Rank the keys that can serve `model` now. `exclude`: keys already tried by this request."""

    request_id: str
    model: str
    objective: str | Weights
    exclude: frozenset[str]
    reply_to: Reply[RoutingDecision]
    k: int = 3


@attrs.frozen
class GetDecision:
    decision_id: str
    reply_to: Reply[RoutingDecision | None]


@attrs.frozen
class RecentDecisions:
    limit: int
    reply_to: Reply[list[RoutingDecision]]


RouterCommand = Decide | GetDecision | RecentDecisions
