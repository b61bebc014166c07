"""`ProviderActor`: owns one provider's adapter and its `httpx.AsyncClient` (connection pool), and judges
provider-level health from the outcomes it is told.

Upstream calls run in the caller's own task, under the caller's deadline and cancellation, on a client
leased from this actor (`with provider.lease() as client:`): a lease is a counter and a cancel scope, no
message round trip. The outcome of each call reaches the actor as a `CallEnded` tell, and only its
receive loop changes the health state. A stopping actor takes no new leases, waits (within its
supervisor's grace) for the leased calls to finish, cancels those still running when the grace runs
out (they end with `ActorStopped`), and only then closes the client.

Health: when several keys of this provider fail with server-side classes (5xx, overloaded, timeout,
connection) and nothing succeeds, the *provider* is degraded; the router then scores its keys down and
those failures stop counting against each key's own breaker.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, assert_never

import httpx
import structlog
import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.domain import health as health_rules
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.health import (
    HealthConfig,
    HealthEvent,
    ProviderDegraded,
    ProviderHealth,
    ProviderRecovered,
    ProviderSnapshot,
)
from apikeyrouter.domain.signal import Capabilities
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.messages.provider import CallEnded, ProviderCommand
from apikeyrouter.observe import EventBus, ProviderHealthChanged

__all__ = ["HealthConfig", "ProviderActor"]

log = structlog.get_logger("apikeyrouter.provider")


class ClientSource(Protocol):
    """What the provider actor needs of an adapter (`adapters.base.ProviderAdapter` is one): its kind, its
    declared models, and a client to own. Declared here so the actor layer needs nothing above it."""

    kind: str
    capabilities: Capabilities

    def make_client(self) -> httpx.AsyncClient: ...


class _Lease:
    """One leased call: its cancel scope is the one a stopping provider cancels when its grace runs out.
    A class rather than a `@contextmanager` generator: one per upstream call, and the generator's
    machinery cost more than the lease itself."""

    __slots__ = ("_client", "_provider", "_scope")

    def __init__(self, provider: ProviderActor, client: httpx.AsyncClient) -> None:
        self._provider = provider
        self._client = client
        self._scope = trio.CancelScope()

    def __enter__(self) -> httpx.AsyncClient:
        scope = self._scope
        provider = self._provider
        leases = provider._leases
        if not leases:
            provider._idle = trio.Event()
        leases.add(scope)
        scope.__enter__()
        return self._client

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scope
        provider = self._provider
        try:
            swallowed = scope.__exit__(exc_type, exc, tb)
        finally:
            leases = provider._leases
            leases.discard(scope)
            if not leases:
                provider._idle.set()
        if scope.cancelled_caught:
            raise ActorStopped(provider.name, "stopped during the call")
        return bool(swallowed)


class ProviderActor(Actor[ProviderCommand]):
    kind = "provider"

    def __init__(
        self,
        provider_id: str,
        adapter: ClientSource,
        *,
        board: SnapshotBoard,
        events: EventBus,
        health: HealthConfig | None = None,
        mailbox: int = 1024,
    ) -> None:
        # One CallEnded per upstream call: the mailbox is sized for bursts of them.
        super().__init__(f"provider:{provider_id}", mailbox=mailbox)
        self.provider_id = provider_id
        self.adapter = adapter
        self.health = health or HealthConfig()
        self._board = board
        self._events = events
        self._client: httpx.AsyncClient | None = None
        self._leases: set[trio.CancelScope] = set()
        self._idle = trio.Event()
        self._idle.set()
        self.requests = 0
        self.failures = 0
        self._health = ProviderHealth()

    async def pre_start(self) -> None:
        self._client = self.adapter.make_client()
        self._publish()

    async def post_stop(self) -> None:
        try:
            await self._idle.wait()  # leased calls finish first (bounded by the supervisor's grace)
        finally:
            for scope in list(self._leases):  # the grace ran out: calls still running end now
                scope.cancel(reason=f"{self.name} stopped")
            client, self._client = self._client, None
            if client is not None:
                with trio.move_on_after(2) as cs:
                    cs.shield = True
                    await client.aclose()

    def receive(self, msg: ProviderCommand) -> None:
        match msg:
            case CallEnded(key_id=key_id, failure=failure):
                self.record(key_id, failure)
            case _:
                assert_never(msg)

    def state_summary(self) -> ProviderSnapshot:
        return self.provider_snapshot()

    def provider_snapshot(self) -> ProviderSnapshot:
        return ProviderSnapshot(
            id=self.provider_id,
            kind=self.adapter.kind,
            degraded=self.degraded,
            reason=self._health.reason,
            in_flight=len(self._leases),
            requests=self.requests,
            failures=self.failures,
            models=self.adapter.capabilities.models,
            at=trio.current_time(),
        )

    def _publish(self) -> None:
        self._board.publish_provider(self.provider_snapshot())

    # -- leases ---------------------------------------------------------------------------------------

    def lease(self) -> _Lease:
        """The client, for one upstream call run by the caller in its own task (`with provider.lease() as
        client:`). Raises `ActorStopped` when the actor is not running, and when it stopped during the
        call (its grace ran out)."""
        client = self._client
        if client is None or self.status != "running":
            raise ActorStopped(self.name, "is not accepting calls")
        return _Lease(self, client)

    # -- health ---------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._health.degraded

    def record(self, key_id: str, failure: FailureClass | None) -> None:
        now = trio.current_time()
        self.requests += 1
        if failure is not None:
            self.failures += 1
        self._health, events = health_rules.on_call(self._health, self.health, key_id, failure, now)
        for event in events:
            self._announce(event)
        if events:
            self._publish()

    def _announce(self, event: HealthEvent) -> None:
        match event:
            case ProviderDegraded(at=at, reason=reason):
                self._events.publish(ProviderHealthChanged(self.provider_id, True, reason, at))
                log.warning("provider_health", provider=self.provider_id, degraded=True, reason=reason)
            case ProviderRecovered(at=at):
                self._events.publish(ProviderHealthChanged(self.provider_id, False, "", at))
                log.info("provider_health", provider=self.provider_id, degraded=False, reason="")
            case _:
                assert_never(event)
