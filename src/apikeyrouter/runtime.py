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
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal

import attrs
import structlog
import trio

from apikeyrouter.actors.base import ActorRef, TreeNode
from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.budget import BudgetActor, month_specs
from apikeyrouter.actors.key import KeyActor, KeyConfig, KeySnapshot
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.actors.router import RouterActor, RoutingDecision
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.adapters.tokens import warm as warm_tokenizers
from apikeyrouter.api import APIKey, tree_to_json
from apikeyrouter.config import RouterConfig, default_config, valid_id
from apikeyrouter.debug.server import DebugServer, open_debug_channel
from apikeyrouter.dispatch import Dispatch, RoutedStreamHandle
from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.circuit import BreakerConfig
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.quota import QuotaConfig
from apikeyrouter.domain.scoring import ScoringConfig, Weights, weights_for
from apikeyrouter.errors import (
    ActorStopped,
    InvalidRequest,
    RouterNotRunning,
    UnknownKey,
    UnknownProvider,
)
from apikeyrouter.events import EventBus
from apikeyrouter.messages.budget import SetBudget, SetBudgets
from apikeyrouter.messages.key import KeyCommand, Operate
from apikeyrouter.messages.router import GetDecision, RecentDecisions
from apikeyrouter.secret import Secret
from apikeyrouter.state import key_json, transition_json
from apikeyrouter.store.memory import MemoryStore, StateStore
from apikeyrouter.supervisors import ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec

__all__ = ["ApiKeyRouter", "RoutedStreamHandle", "open_router"]

log = structlog.get_logger("apikeyrouter.runtime")


def _price_of(adapter: ProviderAdapter, model: str) -> ModelPrice | None:
    table = getattr(adapter, "prices", None)
    price = table.price(model) if table is not None else None
    return price if isinstance(price, ModelPrice) else None


class ApiKeyRouter(Dispatch):
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
        max_wait: float = 60.0,
    ) -> None:
        """`max_wait`: with no caller deadline, the longest a request waits for a key to recover."""
        self.config = config or default_config()
        routing = self.config.routing
        self.objective = self._objective(objective if objective is not None else routing.objective)
        self.max_attempts = max_attempts if max_attempts is not None else routing.max_attempts
        self.wait_for_reset = routing.wait_for_reset
        self.max_wait = max_wait
        self.store: StateStore = store or MemoryStore()
        self.events = events or EventBus()
        self.board = SnapshotBoard()
        self.scoring = scoring or ScoringConfig()
        self._adapters: dict[str, ProviderAdapter] = {}
        self._price_cache: dict[tuple[str, str], ModelPrice | None] = {}
        self.attempt_observers: list[Callable[[Mapping[str, Any]], None]] = []
        self._key_provider: dict[str, str] = {}
        self._key_meta: dict[str, APIKey] = {}
        self._ids = itertools.count(1)
        self._running = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._root: Supervisor | None = None
        self._wall_offset = 0.0
        self._nursery: trio.Nursery | None = None
        self._budget_specs: list[BudgetSpec] = month_specs(self.config)
        self._api_budgets: dict[str, BudgetSpec] = {}  # key budgets set through register_key

    # -- lifetime -------------------------------------------------------------------------------------

    async def __aenter__(self) -> ApiKeyRouter:
        # Wall clock only to render times for humans; every rule runs on trio's clock.
        self._wall_offset = time.time() - trio.current_time()
        grace = self.config.server.grace_period
        self._root = Supervisor(
            "root",
            SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60),
            on_event=self._supervisor_event,
            children=[
                ChildSpec(
                    "providers",
                    lambda: Supervisor(
                        "providers",
                        SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60),
                        on_event=self._supervisor_event,
                    ),
                    shutdown=grace,
                ),
                ChildSpec("budgets", self._make_budgets, shutdown=1.0),
                ChildSpec("router", self._make_router, shutdown=1.0),
            ],
        )
        # The tokenizer's tables take ~0.3 s to load: load them off the event loop now, not on the
        # first request (which would otherwise pay it inside its deadline).
        await trio.to_thread.run_sync(warm_tokenizers)
        self._nursery_cm = trio.open_nursery()
        nursery = self._nursery = await self._nursery_cm.__aenter__()
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
        assert self._root is not None and self._nursery_cm is not None
        # Stopping runs in reverse order: services (proxy, debug) drain first while the router and the
        # keys still work for the requests they let finish; then the router, then the providers.
        self._root.stop()
        try:
            return await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            self._running = False

    def _supervisor_event(self, kind: str, data: Mapping[str, Any]) -> None:
        self.events.publish(kind, data)

    def _make_budgets(self) -> BudgetActor:
        return BudgetActor(self._budget_specs, store=self.store, events=self.events)

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
        # Cached per provider: the router asks for every re-indexed key. remove_provider clears it.
        try:
            return self._price_cache[provider, model]
        except KeyError:
            adapter = self._adapters.get(provider)
            price = self._price_cache[provider, model] = _price_of(adapter, model) if adapter is not None else None
            return price

    async def _load_config(self) -> None:
        from apikeyrouter.adapters.factory import adapter_from_config

        for pcfg in self.config.providers:
            await self.register_provider(pcfg.id, adapter_from_config(pcfg))
        for kcfg in self.config.keys:
            await self._register(kcfg.id, kcfg.secret, kcfg.provider, self._key_settings(kcfg))
            if not kcfg.enabled:
                await self.update_key_state(kcfg.id, "disabled", reason="disabled in config")

    def _key_settings(self, kcfg: Any) -> KeyConfig:
        """Settings of a `[[keys]]` entry."""
        limits = {"rpm": kcfg.rpm, "tpm": kcfg.tpm, "rpd": kcfg.rpd, "tokens_per_month": kcfg.tokens_per_month}
        return self._settings(
            kcfg.id, kcfg.provider, kcfg.models, kcfg.metadata, limits, kcfg.max_in_flight, kcfg.budget
        )

    def _settings(
        self,
        key_id: str,
        provider: str,
        models: Iterable[str],
        metadata: Mapping[str, str],
        limits: Mapping[str, int | None],
        max_in_flight: int | None,
        budget: Decimal | None,
    ) -> KeyConfig:
        """A key actor's settings: the key's own fields plus the router-wide capacity, breaker and failure rules."""
        cfg = self.config
        return KeyConfig(
            id=key_id,
            provider=provider,
            models=frozenset(models),
            metadata=dict(metadata),
            quota=QuotaConfig(
                rpm=limits.get("rpm"),
                tpm=limits.get("tpm"),
                rpd=limits.get("rpd"),
                tokens_per_month=limits.get("tokens_per_month"),
                constrained_below=cfg.capacity.constrained,
                critical_below=cfg.capacity.critical,
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

    @staticmethod
    def _objective(objective: str | Weights | Mapping[str, float] | Any) -> str | Weights:
        # A bad objective is the caller's mistake (e.g. the proxy's objective header): InvalidRequest.
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

    async def add_service(self, spec: ChildSpec) -> Any:
        """Run another child under the root supervisor (the standalone process adds the proxy and the
        debug channel this way); it is stopped, in reverse order, before the router and the providers."""
        return await self._check("add_service").add_child(spec)

    async def apply_config(self, new: RouterConfig) -> dict[str, list[str]]:
        """Bring the running router to `new` (a SIGHUP reload): providers and keys added, removed or
        changed at run time. Requests in flight are not dropped: a removed key's calls finish upstream
        (their settlement is simply ignored). Returns what changed, by id."""
        from apikeyrouter.adapters.factory import adapter_from_config
        from apikeyrouter.config import diff_keys, diff_providers

        self._check("apply_config")
        old = self.config
        keys = diff_keys(old, new)
        providers = diff_providers(old, new)
        report: dict[str, list[str]] = {
            "keys_added": [],
            "keys_removed": [],
            "keys_changed": [],
            "providers_added": [],
            "providers_removed": [],
            "providers_changed": [],
        }
        changed_providers = {p.id for p in providers.changed}
        removed_providers = {p.id for p in providers.removed} | changed_providers
        for kcfg in keys.removed:
            await self.remove_key(kcfg.id)
            report["keys_removed"].append(kcfg.id)
        # A changed provider is replaced whole: its keys are re-registered under the new adapter.
        moved = [k for k in old.keys if k.provider in removed_providers and k.id in self._key_provider]
        for kcfg in moved:
            await self.remove_key(kcfg.id)
        for pid in removed_providers:
            await self.remove_provider(pid)
            report["providers_removed" if pid not in changed_providers else "providers_changed"].append(pid)
        self.config = new
        specs = [*month_specs(new), *self._api_budgets.values()]
        if specs or self._budget_specs:
            self._budget_specs = specs
            await self._budget_ref().tell(SetBudgets(tuple(specs)))
        self.objective = self._objective(new.routing.objective)
        self.max_attempts = new.routing.max_attempts
        self.wait_for_reset = new.routing.wait_for_reset
        for pcfg in new.providers:
            if pcfg.id not in self._adapters:
                await self.register_provider(pcfg.id, adapter_from_config(pcfg))
                if pcfg.id not in changed_providers:
                    report["providers_added"].append(pcfg.id)
        changed_keys = {k.id for k in keys.changed}
        moved_ids = {k.id for k in moved}
        for kcfg in new.keys:
            if kcfg.id in changed_keys and kcfg.id in self._key_provider:
                await self.remove_key(kcfg.id)
            if kcfg.id in self._key_provider:
                continue  # unchanged
            if kcfg.id in changed_keys:
                report["keys_changed"].append(kcfg.id)
            elif kcfg.id not in moved_ids:
                report["keys_added"].append(kcfg.id)
            # A re-registered key restores its stored record (lifecycle, windows, breaker).
            await self._register(kcfg.id, kcfg.secret, kcfg.provider, self._key_settings(kcfg))
            try:
                if self._stored_secret_differs(kcfg.id, kcfg.secret):
                    await self._operate(kcfg.id, "rotate", "key material from reloaded config", kcfg.secret)
                if not kcfg.enabled:
                    await self.update_key_state(kcfg.id, "disabled", reason="disabled in config")
            except InvalidRequest as exc:
                # e.g. new material for a key an operator revoked: revoked stays revoked, the reload goes on.
                report.setdefault("refused", []).append(f"{kcfg.id}: {exc}")
                log.warning("reload_step_refused", key=kcfg.id, reason=str(exc))
        self.events.publish("config.reloaded", {k: v for k, v in report.items() if v})
        log.info("config_reloaded", **{k: v for k, v in report.items() if v})
        return report

    def _stored_secret_differs(self, key_id: str, secret: Secret) -> bool:
        record = self.store.load(f"key:{key_id}")
        current = getattr(record, "secret", None)
        return isinstance(current, Secret) and current != secret

    async def remove_provider(self, provider_id: str) -> None:
        """Stop a provider's subtree (its keys first) and forget it."""
        for key_id in [k for k, p in self._key_provider.items() if p == provider_id]:
            await self.remove_key(key_id)
        await self._providers().remove_child(f"provider:{provider_id}")
        self._adapters.pop(provider_id, None)
        self._price_cache = {k: v for k, v in self._price_cache.items() if k[0] != provider_id}
        self.board.providers.pop(provider_id, None)

    # -- registration ---------------------------------------------------------------------------------

    async def register_provider(self, provider_id: str, adapter: ProviderAdapter) -> None:
        if provider_id in self._adapters:
            raise ValueError(f"provider {provider_id!r} is already registered")
        self._check("register_provider")
        self._adapters[provider_id] = adapter
        board, events, grace = self.board, self.events, self.config.server.grace_period
        on_event = self._supervisor_event

        def make_subtree() -> Supervisor:
            # rest_for_one: a provider crash restarts its keys (they use its client); a key crash
            # restarts that key alone (the keys supervisor is one_for_one).
            return Supervisor(
                f"provider:{provider_id}",
                SupervisorSpec(Strategy.REST_FOR_ONE, intensity=5, period=30),
                on_event=on_event,
                children=[
                    ChildSpec(
                        "provider",
                        lambda: ProviderActor(provider_id, adapter, board=board, events=events),
                        shutdown=grace,
                    ),
                    ChildSpec(
                        "keys",
                        lambda: Supervisor(
                            "keys", SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=30), on_event=on_event
                        ),
                        shutdown=grace,
                    ),
                ],
            )

        # The subtree's grace bounds its whole stop (keys, then the provider draining its calls).
        await self._providers().add_child(ChildSpec(f"provider:{provider_id}", make_subtree, shutdown=grace))
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
        if not valid_id(kid):
            raise InvalidRequest(
                "a key id is 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", param="id"
            )
        limits = dict(limits or {})
        unknown = set(limits) - {"rpm", "tpm", "rpd", "tokens_per_month"}
        if unknown:
            raise InvalidRequest(f"unknown limits: {sorted(unknown)}", param="limits")
        settings = self._settings(kid, provider, models or (), metadata or {}, limits, max_in_flight, budget)
        api_key = await self._register(kid, material, provider, settings)
        if budget is not None:
            spec = BudgetSpec(f"key:{kid}", Decimal(budget), 30 * 86_400.0)
            self._api_budgets[kid] = spec
            self._budget_specs.append(spec)
            await self._budget_ref().tell(SetBudget(spec))
        return api_key

    async def _register(self, key_id: str, secret: Secret, provider: str, settings: KeyConfig) -> APIKey:
        if key_id in self._key_provider:
            raise InvalidRequest(f"key {key_id!r} is already registered", param="id")
        adapter = self._adapters.get(provider)
        if adapter is None:
            raise UnknownProvider(provider)
        if not settings.models and adapter.capabilities.models:
            # A key serves what its provider declares unless the key itself says less.
            settings = attrs.evolve(settings, models=adapter.capabilities.models)
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
        return key_json(snap, trio.current_time(), self._wall_offset)

    def keys(self) -> list[dict[str, Any]]:
        return [self.key_json(s) for s in sorted(self.board.keys.values(), key=lambda s: s.id)]

    def key(self, key_id: str) -> dict[str, Any] | None:
        snap = self.board.keys.get(key_id)
        return self.key_json(snap) if snap is not None else None

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        snap = self.board.keys.get(key_id)
        if snap is None or limit <= 0:
            return []
        return [transition_json(key_id, t, self._wall_offset) for t in snap.lifecycle.history[-limit:]]

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

    def open_debug_channel(self, path: str | None = None) -> AbstractAsyncContextManager[DebugServer]:
        """`async with router.open_debug_channel(path):` serves the debug channel (`apikeyrouter inspect`)
        for this embedded router on a Unix socket (mode 0600) while the block runs."""
        return open_debug_channel(self, path)

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
