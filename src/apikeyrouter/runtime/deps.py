"""What the request path needs from the rest of the router, given explicitly (the registry provides it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.config import ClientConfig, RouterConfig
from apikeyrouter.domain.policy import EffectivePolicy, Policy
from apikeyrouter.domain.request import Usage
from apikeyrouter.domain.scoring import Weights, weights_for
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.messages.budget import BudgetCommand
from apikeyrouter.messages.key import KeyCommand
from apikeyrouter.messages.router import RouterCommand
from apikeyrouter.observe import EventBus
from apikeyrouter.store.redis_shared import SharedLimits

__all__ = ["AttemptObserver", "Deps", "Routing", "parse_objective"]

AttemptObserver = Callable[[Mapping[str, Any]], None]


@attrs.define
class Routing:
    """The router-wide routing settings a reload may change. `max_wait`: with no caller deadline, the
    longest a request waits for a key to recover."""

    objective: str | Weights
    max_attempts: int
    wait_for_reset: bool
    max_wait: float


class Deps(Protocol):
    """Lookups raise `UnknownKey` / `UnknownProvider` / `ActorStopped` / `RouterNotRunning`."""

    config: RouterConfig
    routing: Routing
    events: EventBus
    board: SnapshotBoard
    wall_offset: float
    shared: SharedLimits | None  # several instances on one Redis ([store] kind = "redis"); None: this one alone

    def check(self, operation: str) -> None: ...

    def next_id(self) -> int: ...

    @property
    def budgets_enabled(self) -> bool: ...

    def adapter(self, provider_id: str) -> ProviderAdapter | None: ...

    def key_ref(self, key_id: str) -> ActorRef[KeyCommand]: ...

    def provider(self, provider_id: str) -> ProviderActor: ...

    def router_ref(self) -> ActorRef[RouterCommand]: ...

    def client_config(self, client_id: str) -> ClientConfig | None: ...

    def reconcile(self, provider: str, model: str, estimated_input: int, max_output: int, usage: Usage) -> None: ...

    def policy_for(
        self,
        model: str,
        client: str | None,
        team: str | None,
        tags: frozenset[str],
        now: float,
        own: tuple[Policy, ...] = (),
    ) -> EffectivePolicy | None: ...

    def budget_ref(self) -> ActorRef[BudgetCommand]: ...


def parse_objective(objective: object) -> str | Weights:
    """A named objective or weights (a mapping or an attrs instance). A bad one is the caller's mistake
    (e.g. the proxy's objective header): `InvalidRequest`."""
    try:
        if isinstance(objective, str | Weights):
            weights_for(objective)  # validates the name
            return objective
        if isinstance(objective, Mapping):
            return Weights(**{k: float(v) for k, v in objective.items()})
        if attrs.has(type(objective)):
            return Weights(**attrs.asdict(objective))  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"invalid objective: {exc}", param="objective") from exc
    raise InvalidRequest(f"objective must be a name or weights, got {type(objective).__name__}", param="objective")
