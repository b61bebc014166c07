"""`ApiKeyRouter`: the embedded router. Builds the supervision tree and dispatches requests through it.

    root (one_for_one)
    ├── providers (one_for_one)
    │   └── provider:<id> (rest_for_one)    ProviderActor first, then its KeyActors
    └── router                               RouterActor: decisions only

A request (`route` / `stream`) runs in the caller's task: ask the router for a decision, ask the best key
to reserve (it may refuse: take the next), run the upstream call through the provider actor under the
caller's cancellation, then settle the outcome with the key. A retryable failure takes the next key,
within `max_attempts` and the caller's deadline (`trio.fail_after` around the call); a caller fault
returns at once. When every key is benched, the request waits for the earliest recovery if it falls
inside the deadline, and otherwise fails at once with `NoKeyAvailable(retry_at=...)`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal

import attrs
import structlog
import trio

from apikeyrouter.actors.base import ActorRef, TreeNode
from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.key import KeyActor, KeyConfig, KeySnapshot
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.actors.router import RouterActor, RoutingDecision
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.api import APIKey, tree_to_json
from apikeyrouter.config import RouterConfig, default_config
from apikeyrouter.domain.circuit import BreakerConfig
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import QuotaConfig
from apikeyrouter.domain.scoring import ScoringConfig, Weights, render_time, weights_for
from apikeyrouter.errors import (
    ActorError,
    ActorStopped,
    InvalidRequest,
    MailboxFull,
    NoKeyAvailable,
    RouterNotRunning,
    StreamInterrupted,
    UnknownKey,
    UnknownModel,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.events import EventBus
from apikeyrouter.intent import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse, Usage
from apikeyrouter.messages.key import Granted, KeyCommand, Operate, Outcome, Refused, Release, Reserve, Settle
from apikeyrouter.messages.router import Decide, GetDecision, RecentDecisions
from apikeyrouter.secret import Secret
from apikeyrouter.store.memory import MemoryStore, StateStore
from apikeyrouter.supervisors import ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec

__all__ = ["ApiKeyRouter", "RoutedStreamHandle", "open_router"]

log = structlog.get_logger("apikeyrouter.runtime")

_ZERO = Decimal(0)
_MAX_LEASE_S = 600.0  # a reservation whose caller vanished is reclaimed after this (streams: x6)


def _price_of(adapter: ProviderAdapter, model: str) -> ModelPrice | None:
    table = getattr(adapter, "prices", None)
    if table is None:
        return None
    price = table.price(model)
    if price is None:
        return None
    return ModelPrice(input_per_m=price.input_per_mtok, output_per_m=price.output_per_mtok)


@attrs.frozen
class _Attempt:
    key_id: str
    provider: str
    grant: Granted
    decision: RoutingDecision


class RoutedStreamHandle:
    """An open routed stream: `metadata` (key, attempts, decision) is known before the first chunk;
    `final_metadata` adds the settled cost once the stream has ended."""

    def __init__(self, metadata: ResponseMetadata, first: StreamChunk, rest: AsyncIterator[StreamChunk]) -> None:
        self.metadata = metadata
        self.final_metadata: ResponseMetadata | None = None
        self._first: StreamChunk | None = first
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:
            try:
                chunk = await self._rest.__anext__()
            except StopAsyncIteration:
                return
            yield chunk


class ApiKeyRouter:
    """Route LLM calls across many keys. Use as `async with ApiKeyRouter() as router:`."""

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        store: StateStore | None = None,
        objective: str | Weights | Mapping[str, float] | None = None,
        max_attempts: int | None = None,
        events: EventBus | None = None,
        scoring: ScoringConfig | None = None,
    ) -> None:
        self.config = config or default_config()
        routing = self.config.routing
        self.objective = self._objective(objective if objective is not None else routing.objective)
        self.max_attempts = max_attempts if max_attempts is not None else routing.max_attempts
        self.wait_for_reset = routing.wait_for_reset
        self.store: StateStore = store or MemoryStore()
        self.events = events or EventBus()
        self.board = SnapshotBoard()
        self.scoring = scoring or ScoringConfig()
        self._adapters: dict[str, ProviderAdapter] = {}
        self._key_provider: dict[str, str] = {}
        self._key_meta: dict[str, APIKey] = {}
        self._ids = itertools.count(1)
        self._running = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._root: Supervisor | None = None
        self._wall_offset = 0.0

    # -- lifetime -------------------------------------------------------------------------------------

    async def __aenter__(self) -> ApiKeyRouter:
        # Wall clock only to render times for humans; every rule runs on trio's clock.
        self._wall_offset = time.time() - trio.current_time()
        grace = self.config.server.grace_period
        self._root = Supervisor(
            "root",
            SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60),
            [
                ChildSpec(
                    "providers",
                    lambda: Supervisor("providers", SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60)),
                    shutdown=grace,
                ),
                ChildSpec("router", self._make_router, shutdown=1.0),
            ],
        )
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        try:
            await nursery.start(self._root.run)
            self._running = True
            await self._load_config()
        except BaseException as exc:
            self._running = False
            self._root.stop()
            await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._running = False
        assert self._root is not None and self._nursery_cm is not None
        self._root.stop()
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)

    def _make_router(self) -> RouterActor:
        return RouterActor(
            board=self.board,
            events=self.events,
            prices=self._lookup_price,
            scoring=self.scoring,
            wall_offset=self._wall_offset,
            retention=self.config.server.decision_retention,
        )

    def _lookup_price(self, provider: str, model: str) -> ModelPrice | None:
        adapter = self._adapters.get(provider)
        return _price_of(adapter, model) if adapter is not None else None

    async def _load_config(self) -> None:
        from apikeyrouter.adapters.factory import adapter_from_config

        for pcfg in self.config.providers:
            await self.register_provider(pcfg.id, adapter_from_config(pcfg))
        for kcfg in self.config.keys:
            await self._register(kcfg.id, kcfg.secret, kcfg.provider, self._key_settings(kcfg))
            if not kcfg.enabled:
                await self.update_key_state(kcfg.id, "disabled", reason="disabled in config")

    def _key_settings(self, kcfg: Any) -> KeyConfig:
        cfg = self.config
        return KeyConfig(
            id=kcfg.id,
            provider=kcfg.provider,
            models=frozenset(kcfg.models),
            metadata=dict(kcfg.metadata),
            quota=QuotaConfig(
                rpm=kcfg.rpm,
                tpm=kcfg.tpm,
                rpd=kcfg.rpd,
                tokens_per_month=kcfg.tokens_per_month,
                constrained_below=cfg.capacity.constrained,
                critical_below=cfg.capacity.critical,
            ),
            breaker=BreakerConfig(
                failure_threshold=cfg.breaker.failure_threshold,
                cooldown=cfg.breaker.cooldown,
                probe_timeout=cfg.breaker.probe_deadline,
            ),
            max_in_flight=kcfg.max_in_flight,
            budget=kcfg.budget,
            failures=dict(cfg.failures),
            default_throttle_s=cfg.routing.default_retry_after,
        )

    @staticmethod
    def _objective(objective: str | Weights | Mapping[str, float] | Any) -> str | Weights:
        # A bad objective is the caller's mistake (e.g. the proxy's objective header): InvalidRequest, not a crash.
        try:
            if isinstance(objective, str | Weights):
                weights_for(objective)  # validates the name
                return objective
            if isinstance(objective, Mapping):
                return Weights(**{k: float(v) for k, v in objective.items()})
            if attrs.has(type(objective)):
                return Weights(**attrs.asdict(objective))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"invalid objective: {exc}", param="objective") from exc
        raise InvalidRequest(f"objective must be a name or weights, got {type(objective).__name__}", param="objective")

    def _check(self, operation: str) -> Supervisor:
        if not self._running or self._root is None:
            raise RouterNotRunning(operation)
        return self._root

    @property
    def running(self) -> bool:
        return self._running

    # -- tree lookups ---------------------------------------------------------------------------------

    def _providers(self) -> Supervisor:
        sup = self._check("this call").child("providers")
        if not isinstance(sup, Supervisor):
            raise ActorStopped("providers", "is restarting")
        return sup

    def _provider_sup(self, provider_id: str) -> Supervisor:
        sup = self._providers().child(f"provider:{provider_id}")
        if not isinstance(sup, Supervisor):
            raise UnknownProvider(provider_id)
        return sup

    def _provider(self, provider_id: str) -> ProviderActor:
        actor = self._provider_sup(provider_id).child("provider")
        if not isinstance(actor, ProviderActor):
            raise ActorStopped(f"provider:{provider_id}", "is restarting")
        return actor

    def _keys_sup(self, provider_id: str) -> Supervisor:
        sup = self._provider_sup(provider_id).child("keys")
        if not isinstance(sup, Supervisor):
            raise ActorStopped(f"provider:{provider_id}/keys", "is restarting")
        return sup

    def _key(self, key_id: str) -> KeyActor:
        provider = self._key_provider.get(key_id)
        if provider is None:
            raise UnknownKey(key_id)
        actor = self._keys_sup(provider).child(f"key:{key_id}")
        if not isinstance(actor, KeyActor):
            raise ActorStopped(f"key:{key_id}", "is restarting")
        return actor

    def _router_ref(self) -> ActorRef[Any]:
        actor = self._check("route").child("router")
        if not isinstance(actor, RouterActor):
            raise ActorStopped("router", "is restarting")
        return actor.ref

    # -- registration ---------------------------------------------------------------------------------

    async def register_provider(self, provider_id: str, adapter: ProviderAdapter) -> None:
        if provider_id in self._adapters:
            raise ValueError(f"provider {provider_id!r} is already registered")
        self._check("register_provider")
        self._adapters[provider_id] = adapter
        board, events, grace = self.board, self.events, self.config.server.grace_period

        def make_subtree() -> Supervisor:
            # rest_for_one: a provider crash restarts its keys (they use its client); a key crash
            # restarts that key alone (the keys supervisor is one_for_one).
            return Supervisor(
                f"provider:{provider_id}",
                SupervisorSpec(Strategy.REST_FOR_ONE, intensity=5, period=30),
                [
                    ChildSpec(
                        "provider",
                        lambda: ProviderActor(provider_id, adapter, board=board, events=events),
                        shutdown=grace,
                    ),
                    ChildSpec(
                        "keys",
                        lambda: Supervisor("keys", SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=30)),
                        shutdown=grace,
                    ),
                ],
            )

        await self._providers().add_child(ChildSpec(f"provider:{provider_id}", make_subtree))
        log.info("provider_registered", provider=provider_id, kind=adapter.kind)

    async def register_key(
        self,
        secret: str | Secret,
        provider: str,
        metadata: Mapping[str, str] | None = None,
        *,
        key_id: str | None = None,
        limits: Mapping[str, int] | None = None,
        models: list[str] | None = None,
        max_in_flight: int | None = None,
        budget: Decimal | None = None,
    ) -> APIKey:
        """Add a key at run time; returns its `APIKey` (stable id, fingerprint, never the secret)."""
        self._check("register_key")
        if provider not in self._adapters:
            raise UnknownProvider(provider)
        material = secret if isinstance(secret, Secret) else Secret(secret)
        kid = key_id or f"{provider}-{material.fingerprint[3:11]}"
        limits = dict(limits or {})
        unknown = set(limits) - {"rpm", "tpm", "rpd", "tokens_per_month"}
        if unknown:
            raise InvalidRequest(f"unknown limits: {sorted(unknown)}", param="limits")
        cfg = self.config
        settings = KeyConfig(
            id=kid,
            provider=provider,
            models=frozenset(models or ()),
            metadata=dict(metadata or {}),
            quota=QuotaConfig(
                constrained_below=cfg.capacity.constrained, critical_below=cfg.capacity.critical, **limits
            ),
            breaker=BreakerConfig(
                failure_threshold=cfg.breaker.failure_threshold,
                cooldown=cfg.breaker.cooldown,
                probe_timeout=cfg.breaker.probe_deadline,
            ),
            max_in_flight=max_in_flight,
            budget=budget,
            failures=dict(cfg.failures),
            default_throttle_s=cfg.routing.default_retry_after,
        )
        return await self._register(kid, material, provider, settings)

    async def _register(self, key_id: str, secret: Secret, provider: str, settings: KeyConfig) -> APIKey:
        if key_id in self._key_provider:
            raise ValueError(f"key {key_id!r} is already registered")
        self._key_provider[key_id] = provider
        store, board, events, offset = self.store, self.board, self.events, self._wall_offset
        spec = ChildSpec(
            f"key:{key_id}",
            lambda: KeyActor(settings, secret, store=store, board=board, events=events, wall_offset=offset),
            restart=Restart.PERMANENT,
            shutdown=self.config.server.grace_period,
        )
        try:
            await self._keys_sup(provider).add_child(spec)
        except BaseException:
            del self._key_provider[key_id]
            raise
        api_key = APIKey(id=key_id, provider=provider, fingerprint=secret.fingerprint, metadata=dict(settings.metadata))
        self._key_meta[key_id] = api_key
        self.events.publish("key.registered", {"key": key_id, "provider": provider})
        log.info("key_registered", key=key_id, provider=provider, fingerprint=secret.fingerprint)
        return api_key

    async def remove_key(self, key_id: str) -> None:
        """Stop the key's actor and forget it (its stored record is kept for audit)."""
        provider = self._key_provider.get(key_id)
        if provider is None:
            raise UnknownKey(key_id)
        await self._keys_sup(provider).remove_child(f"key:{key_id}")
        del self._key_provider[key_id]
        self._key_meta.pop(key_id, None)
        self.board.remove_key(key_id)

    async def _operate(
        self,
        key_id: str,
        action: Literal["disable", "enable", "revoke", "rotate"],
        reason: str,
        secret: Secret | None = None,
    ) -> None:
        self._check(action)
        ref: ActorRef[KeyCommand] = self._key(key_id).ref
        refused: str | None = await ref.ask(lambda r: Operate(action, reason, r, secret))
        if refused is not None:
            raise InvalidRequest(f"cannot {action} key {key_id}: {refused}", param="state")

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        """Operator: `disabled` / `active` (enable) / `revoked`."""
        actions: dict[str, Literal["disable", "enable", "revoke"]] = {
            "disabled": "disable",
            "disable": "disable",
            "active": "enable",
            "enable": "enable",
            "enabled": "enable",
            "revoked": "revoke",
            "revoke": "revoke",
        }
        action = actions.get(state)
        if action is None:
            raise InvalidRequest(f"unknown key state {state!r}: use disabled, active or revoked", param="state")
        await self._operate(key_id, action, reason or f"{action}d by operator")

    async def rotate_key(self, key_id: str, new_secret: str | Secret) -> None:
        material = new_secret if isinstance(new_secret, Secret) else Secret(new_secret)
        await self._operate(key_id, "rotate", "key material rotated", material)
        meta = self._key_meta.get(key_id)
        if meta is not None:
            self._key_meta[key_id] = attrs.evolve(meta, fingerprint=material.fingerprint)

    async def revoke_key(self, key_id: str, reason: str = "revoked by operator") -> None:
        """No new requests use the key; requests already in flight finish and settle."""
        await self._operate(key_id, "revoke", reason)

    # -- routing --------------------------------------------------------------------------------------

    def _intent(self, intent: RequestIntent | Mapping[str, Any]) -> RequestIntent:
        return intent if isinstance(intent, RequestIntent) else RequestIntent.from_openai(intent)

    async def _decide(
        self, request_id: str, model: str, objective: str | Weights, exclude: set[str]
    ) -> RoutingDecision:
        ref = self._router_ref()
        decision: RoutingDecision = await ref.ask(lambda r: Decide(request_id, model, objective, frozenset(exclude), r))
        return decision

    async def _acquire(
        self,
        request_id: str,
        intent: RequestIntent,
        objective: str | Weights,
        tried: set[str],
        attempts: int,
        last_error: UpstreamError | None,
        lease_s: float,
    ) -> _Attempt:
        """Decide and reserve: returns the granted attempt, waits for a recovery, or raises."""
        refused: set[str] = set()
        refusals: list[str] = []
        while True:
            decision = await self._decide(request_id, intent.model, objective, tried | refused)
            for cand in decision.candidates:
                provider = cand.provider
                adapter = self._adapters[provider]
                est = adapter.estimate(intent)
                now = trio.current_time()
                deadline = trio.current_effective_deadline()
                lease_until = min(deadline, now + lease_s) + 5.0
                try:
                    ref = self._key(cand.key_id).ref
                    reply = await ref.ask(
                        lambda r, est=est, lease_until=lease_until: Reserve(  # type: ignore[misc]
                            request_id,
                            intent.model,
                            est.input_tokens + est.max_output_tokens,
                            est.worst_case_cost,
                            lease_until,
                            r,
                        )
                    )
                except ActorStopped:
                    refused.add(cand.key_id)
                    continue
                if isinstance(reply, Refused):
                    refused.add(cand.key_id)
                    refusals.append(f"{cand.key_id}: {reply.reason}")
                    log.debug("reserve_refused", request_id=request_id, key=cand.key_id, reason=reply.reason)
                    continue
                if refusals:
                    # The decision ranked on snapshots; say which keys refused when asked to reserve.
                    note = ". refused at reservation: " + "; ".join(refusals)
                    decision = attrs.evolve(decision, explanation=decision.explanation + note)
                return _Attempt(cand.key_id, provider, reply, decision)
            if decision.candidates:
                continue  # every candidate refused (their state moved on): decide again without them
            if decision.serving == 0:
                raise UnknownModel(intent.model)
            if last_error is not None and (attempts >= self.max_attempts or (not refused and not decision.retry_at)):
                raise last_error
            retry_at = decision.retry_at
            deadline = trio.current_effective_deadline()
            if self.wait_for_reset and retry_at is not None and retry_at <= deadline and attempts < self.max_attempts:
                log.info("waiting_for_key", request_id=request_id, until=render_time(retry_at, self._wall_offset))
                await trio.sleep_until(retry_at)
                tried.clear()
                refused.clear()
                continue
            now = trio.current_time()
            when = (
                "" if retry_at is None else f"; the earliest key recovers at {render_time(retry_at, self._wall_offset)}"
            )
            raise NoKeyAvailable(
                f"no key can serve {intent.model} before the deadline{when}",
                retry_at=retry_at,
                retry_after=None if retry_at is None else max(0.0, retry_at - now),
                reasons=dict(decision.excluded),
            )

    async def _settle(self, key_id: str, rid: int, outcome: Outcome) -> None:
        # Wait until the key has taken the outcome in, so the caller's next request is decided on the key
        # as it is after this call: a snapshot still showing this call in flight excludes a key at its
        # in-flight limit. Shielded and bounded: the accounting must land even for a caller being cancelled.
        try:
            ref: ActorRef[KeyCommand] = self._key(key_id).ref
            with trio.move_on_after(5) as cs:
                cs.shield = True
                await ref.ask(lambda r: Settle(rid, outcome, r))
        except (ActorError, UnknownKey, UnknownProvider):
            pass  # the key is gone (or restarting): its reservation went with it

    async def _release(self, key_id: str, rid: int, reason: str) -> None:
        msg = Release(rid, reason)
        try:
            ref = self._key(key_id).ref
            try:
                ref.tell_nowait(msg)
            except MailboxFull:
                with trio.move_on_after(5) as cs:
                    cs.shield = True
                    await ref.tell(msg)
        except (ActorStopped, UnknownKey, UnknownProvider):
            pass

    def _outcome_of(self, exc: UpstreamError, provider: str, latency: float) -> Outcome:
        degraded = False
        with suppress(ActorStopped, UnknownProvider):
            degraded = self._provider(provider).degraded
        return Outcome(
            failure=exc.failure,
            latency_s=latency,
            signal=exc.signal,
            retry_after=exc.retry_after,
            message=exc.message[:200],
            provider_degraded=degraded,
        )

    def _metadata(
        self, attempt: _Attempt, request_id: str, attempts: int, cost: Decimal, latency: float
    ) -> ResponseMetadata:
        return ResponseMetadata(
            key_used=attempt.key_id,
            provider=attempt.provider,
            cost=cost,
            attempts=attempts,
            latency_s=latency,
            decision_id=attempt.decision.id,
            decision=attempt.decision,
            request_id=request_id,
        )

    def _retryable(self, exc: UpstreamError, attempts: int) -> bool:
        action = self.config.failures[exc.failure]
        return action.retry_other_key and attempts < self.max_attempts

    async def route(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> SystemResponse:
        """Send one chat request through the best key now, failing over as needed.

        The deadline is the caller's: wrap the call in `trio.fail_after(...)`. Raises `NoKeyAvailable`,
        `UnknownModel`, `InvalidRequest`, or the last `UpstreamError`.
        """
        self._check("route")
        req = self._intent(intent)
        goal = self.objective if objective is None else self._objective(objective)
        request_id = f"req-{next(self._ids)}"
        start = trio.current_time()
        tried: set[str] = set()
        attempts = 0
        last_error: UpstreamError | None = None
        while True:
            attempt = await self._acquire(request_id, req, goal, tried, attempts, last_error, _MAX_LEASE_S)
            attempts += 1
            provider = self._adapters[attempt.provider]
            call_start = trio.current_time()
            try:
                result = await self._provider(attempt.provider).complete(req, attempt.grant.secret, attempt.key_id)
            except UpstreamError as exc:
                latency = trio.current_time() - call_start
                await self._settle(
                    attempt.key_id, attempt.grant.reservation_id, self._outcome_of(exc, attempt.provider, latency)
                )
                self._record_attempt(request_id, attempt, attempts, exc.failure, latency)
                tried.add(attempt.key_id)
                last_error = exc
                if not self._retryable(exc, attempts):
                    raise
                continue
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._release(attempt.key_id, attempt.grant.reservation_id, "cancelled")
                raise
            latency = trio.current_time() - call_start
            response = result.response
            cost = provider.cost(req.model, response.usage)
            await self._settle(
                attempt.key_id,
                attempt.grant.reservation_id,
                Outcome(None, usage=response.usage, cost=cost, latency_s=latency, signal=result.signal),
            )
            self._record_attempt(request_id, attempt, attempts, None, latency)
            meta = self._metadata(attempt, request_id, attempts, cost, trio.current_time() - start)
            return attrs.evolve(response, metadata=meta)

    def _record_attempt(
        self, request_id: str, attempt: _Attempt, n: int, failure: FailureClass | None, latency: float
    ) -> None:
        data = {
            "request_id": request_id,
            "key": attempt.key_id,
            "provider": attempt.provider,
            "attempt": n,
            "decision_id": attempt.decision.id,
            "outcome": "success" if failure is None else failure.value,
            "latency_ms": round(latency * 1000, 3),
        }
        self.events.publish("request.attempt", data)
        if failure is not None:
            log.info("attempt_failed", **data)

    @asynccontextmanager
    async def stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> AsyncIterator[RoutedStreamHandle]:
        """Open a routed stream. Failover happens only before the first chunk is handed over; after it,
        an upstream failure raises `StreamInterrupted` from the iteration, and the usage seen is settled."""
        self._check("stream")
        req = self._intent(intent)
        goal = self.objective if objective is None else self._objective(objective)
        request_id = f"req-{next(self._ids)}"
        start = trio.current_time()
        tried: set[str] = set()
        attempts = 0
        last_error: UpstreamError | None = None
        while True:
            attempt = await self._acquire(request_id, req, goal, tried, attempts, last_error, _MAX_LEASE_S * 6)
            attempts += 1
            adapter = self._adapters[attempt.provider]
            call_start = trio.current_time()
            settled = False
            async with AsyncExitStack() as stack:
                try:
                    upstream = await stack.enter_async_context(
                        self._provider(attempt.provider).stream(req, attempt.grant.secret, attempt.key_id)
                    )
                    chunks = upstream.__aiter__()
                    first = await chunks.__anext__()
                except (UpstreamError, StopAsyncIteration) as err:
                    exc = (
                        err
                        if isinstance(err, UpstreamError)
                        else StreamInterrupted(
                            "stream ended before any chunk",
                            failure=FailureClass.SERVER_ERROR,
                            provider=attempt.provider,
                        )
                    )
                    latency = trio.current_time() - call_start
                    await self._settle(
                        attempt.key_id, attempt.grant.reservation_id, self._outcome_of(exc, attempt.provider, latency)
                    )
                    self._record_attempt(request_id, attempt, attempts, exc.failure, latency)
                    tried.add(attempt.key_id)
                    last_error = exc
                    if not self._retryable(exc, attempts):
                        raise exc from None
                    continue
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await self._release(attempt.key_id, attempt.grant.reservation_id, "cancelled")
                    raise
                meta = self._metadata(attempt, request_id, attempts, _ZERO, trio.current_time() - start)
                handle = RoutedStreamHandle(meta, first, chunks)
                failure: UpstreamError | None = None
                try:
                    yield handle
                except UpstreamError as exc:
                    failure = exc
                    raise
                except BaseException:
                    # The caller left mid-stream: the provider saw the request, so settle what was used.
                    usage = upstream.usage or Usage()
                    with trio.CancelScope(shield=True):
                        await self._settle(
                            attempt.key_id,
                            attempt.grant.reservation_id,
                            Outcome(
                                None,
                                usage=usage,
                                cost=adapter.cost(req.model, usage),
                                latency_s=trio.current_time() - call_start,
                            ),
                        )
                    settled = True
                    raise
                finally:
                    if not settled:
                        usage = upstream.usage or Usage()
                        cost = adapter.cost(req.model, usage)
                        latency = trio.current_time() - call_start
                        outcome = (
                            Outcome(None, usage=usage, cost=cost, latency_s=latency, signal=upstream.signal)
                            if failure is None
                            else attrs.evolve(
                                self._outcome_of(failure, attempt.provider, latency), usage=usage, cost=cost
                            )
                        )
                        with trio.CancelScope(shield=True):
                            await self._settle(attempt.key_id, attempt.grant.reservation_id, outcome)
                        self._record_attempt(
                            request_id, attempt, attempts, None if failure is None else failure.failure, latency
                        )
                        handle.final_metadata = attrs.evolve(meta, cost=cost, latency_s=trio.current_time() - start)
                return

    async def route_stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """`async for chunk in router.route_stream(...)`: the simple form of `stream()`."""
        async with self.stream(intent, objective=objective, client=client) as handle:
            async for chunk in handle:
                yield chunk

    # -- state ----------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        found: set[str] = set()
        for provider_id, adapter in self._adapters.items():
            declared = adapter.capabilities.models
            keys = [s for s in self.board.keys.values() if s.provider == provider_id]
            for snap in keys:
                found |= snap.models or declared
        return sorted(found)

    def ready(self) -> bool:
        if not self._running:
            return False
        now = trio.current_time()
        return any(s.available_at(now) == now for s in self.board.keys.values())

    def key_json(self, snap: KeySnapshot) -> dict[str, Any]:
        now = trio.current_time()
        lc = snap.lifecycle
        state = lc.state
        if state.timed and lc.until is not None and now >= lc.until:
            state = KeyState.ACTIVE
        b = snap.breaker
        pred = snap.prediction

        def wall(t: float | None) -> str | None:
            if t is None:
                return None
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t + self._wall_offset))

        breaker_until = b.open_until if b.open_until is not None else b.probe_deadline
        return {
            "id": snap.id,
            "provider": snap.provider,
            "fingerprint": snap.fingerprint,
            "lifecycle": state.value,
            "lifecycle_until": lc.until if state.timed else None,
            "lifecycle_until_wall": wall(lc.until) if state.timed else None,
            "lifecycle_reason": lc.reason,
            "capacity": snap.capacity.state.value,
            "capacity_left_pct": round(snap.capacity.fraction_left * 100, 1),
            "prediction": {
                "seconds_to_exhaustion": None
                if pred.seconds_to_exhaustion is None or math.isinf(pred.seconds_to_exhaustion)
                else round(pred.seconds_to_exhaustion, 1),
                "confidence": round(pred.confidence, 3),
                "window": pred.window,
            },
            "breaker": b.state.value,
            "breaker_until": breaker_until,
            "breaker_until_wall": wall(breaker_until),
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

    def keys(self) -> list[dict[str, Any]]:
        return [self.key_json(s) for s in sorted(self.board.keys.values(), key=lambda s: s.id)]

    def key(self, key_id: str) -> dict[str, Any] | None:
        snap = self.board.keys.get(key_id)
        return self.key_json(snap) if snap is not None else None

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        snap = self.board.keys.get(key_id)
        if snap is None:
            return []
        out = []
        for t in snap.lifecycle.history[-limit:] if limit > 0 else ():
            out.append(
                {
                    "key": key_id,
                    "from": t.from_state.value,
                    "to": t.to_state.value,
                    "reason": t.reason,
                    "at": t.at,
                    "at_wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.at + self._wall_offset)),
                    "until": t.until,
                    "cause": t.cause.value,
                }
            )
        return out

    def _router_actor(self) -> RouterActor | None:
        if self._root is None:
            return None
        actor = self._root.child("router")
        return actor if isinstance(actor, RouterActor) else None

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        actor = self._router_actor()
        return [d.to_json() for d in actor.recent(limit)] if actor is not None else []

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        actor = self._router_actor()
        found = actor.lookup(decision_id) if actor is not None else None
        return found.to_json() if found is not None else None

    async def get_decision(self, decision_id: str) -> RoutingDecision | None:
        found: RoutingDecision | None = await self._router_ref().ask(lambda r: GetDecision(decision_id, r))
        return found

    async def recent_decisions(self, limit: int = 20) -> list[RoutingDecision]:
        found: list[RoutingDecision] = await self._router_ref().ask(lambda r: RecentDecisions(limit, r))
        return found

    def tree(self) -> TreeNode:
        if self._root is None:
            return TreeNode(name="root", kind="supervisor", status="stopped", restarts=0)
        return self._root.tree()

    def get_state_summary(self) -> dict[str, Any]:
        providers = [
            {
                "id": p.id,
                "kind": p.kind,
                "degraded": p.degraded,
                "reason": p.reason,
                "in_flight": p.in_flight,
                "requests": p.requests,
                "failures": p.failures,
            }
            for p in sorted(self.board.providers.values(), key=lambda p: p.id)
        ]
        keys = self.keys()
        return {
            "running": self._running,
            "ready": self.ready(),
            "objective": self.objective if isinstance(self.objective, str) else attrs.asdict(self.objective),
            "max_attempts": self.max_attempts,
            "providers": providers,
            "keys": keys,
            "in_flight": sum(k["in_flight"] for k in keys),
            "tree": tree_to_json(self.tree()),
        }


def open_router(config: RouterConfig | None = None, **kwargs: Any) -> ApiKeyRouter:
    """`async with open_router(config) as router:` — the same config object `serve` loads from TOML."""
    return ApiKeyRouter(config, **kwargs)
