"""What the router knows about its providers and keys, and where their actors are.

`Registry` registers and removes providers and keys (as children of the supervision tree built by
tree.py), carries out operator commands on keys, and gives the request path its dependencies (`Deps`):
the routing settings and the refs of the actors a request talks to. Refs are cached: a ref stays valid
while its actor runs (a restarted actor keeps its ref), and one whose actor has stopped is looked up in
the tree again.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import attrs
import structlog
import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.budget import BudgetActor, client_templates, month_specs, policy_specs, rate_limits
from apikeyrouter.actors.key import KeyActor
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.actors.router import RouterActor
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.config import ClientConfig, RouterConfig, universe_of, valid_id
from apikeyrouter.domain import reconcile
from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.history import DecisionRow
from apikeyrouter.domain.keystate import KeySettings
from apikeyrouter.domain.period import CalendarPeriod
from apikeyrouter.domain.policy import EffectivePolicy, Policy, Universe
from apikeyrouter.domain.quota import QuotaConfig
from apikeyrouter.domain.request import Usage
from apikeyrouter.domain.scoring import ScoringConfig
from apikeyrouter.errors import ActorStopped, InvalidRequest, MailboxFull, RouterNotRunning, UnknownKey, UnknownProvider
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.messages.budget import BudgetCommand, SetBudget, SetBudgets
from apikeyrouter.messages.key import ApplyShared, KeyCommand, Operate
from apikeyrouter.messages.router import RouterCommand
from apikeyrouter.observe import Event, EventBus, KeyRegistered, RequestAttempted
from apikeyrouter.runtime.api import APIKey
from apikeyrouter.runtime.deps import Routing, parse_objective
from apikeyrouter.runtime.policies import PolicyBook
from apikeyrouter.runtime.tree import key_child, provider_child
from apikeyrouter.secret import Secret, secret_problem
from apikeyrouter.store.backend import StateStore
from apikeyrouter.store.port import StorePort
from apikeyrouter.store.redis_shared import SharedLimits
from apikeyrouter.store.writer import StoreState, StoreWriter
from apikeyrouter.supervisors import Supervisor

__all__ = ["Registry"]

PRICE_CACHE_SIZE = 1024  # (provider, model) prices kept; least recently used dropped first

log = structlog.get_logger("apikeyrouter.runtime")

Action = Literal["disable", "enable", "revoke", "rotate"]
_STATE_ACTIONS: dict[str, Literal["disable", "enable", "revoke"]] = {
    "disabled": "disable",
    "disable": "disable",
    "active": "enable",
    "enable": "enable",
    "enabled": "enable",
    "revoked": "revoke",
    "revoke": "revoke",
}


def _price_of(adapter: ProviderAdapter, model: str) -> ModelPrice | None:
    table = getattr(adapter, "prices", None)
    price = table.price(model) if table is not None else None
    return price if isinstance(price, ModelPrice) else None


def _material(secret: str | Secret) -> Secret:
    """Key material from a caller: unusable material (it could not go into an HTTP header) is the
    caller's mistake, `InvalidRequest` on "secret", as the proxy's POST /keys says it; never echoed."""
    if isinstance(secret, Secret):
        return secret
    problem = secret_problem(secret)
    if problem is not None:
        raise InvalidRequest(f"a secret {problem}", param="secret")
    return Secret(secret)


class Registry:
    """Implements `Deps` for the pipeline. `root` is set while the tree runs (open.py)."""

    def __init__(
        self,
        config: RouterConfig,
        routing: Routing,
        *,
        store: StateStore,
        events: EventBus,
        scoring: ScoringConfig,
    ) -> None:
        self.config = config
        self.routing = routing
        self.store = store
        self.store_state = StoreState(store)
        self.store_port = StorePort(self.store_state.pending)  # actors put their changes where the writer takes them
        self.decisions_dropped = 0
        events.observe(RequestAttempted, self.record_attempt)
        self.events = events
        self.ratios: dict[tuple[str, str], reconcile.Ratio] = {}  # reconcile: learned per (provider, model)
        self.scoring = attrs.evolve(scoring, ratios=self.ratios)  # the cost objective reads them live
        self.board = SnapshotBoard()
        self.wall_offset = 0.0
        self.root: Supervisor | None = None
        self.running = False
        self.adapters: dict[str, ProviderAdapter] = {}
        self.key_provider: dict[str, str] = {}
        self.key_meta: dict[str, APIKey] = {}
        self.budget_specs: list[BudgetSpec] = month_specs(config)
        self.api_budgets: dict[str, BudgetSpec] = {}  # key budgets set through register_key
        self._adding: set[str] = set()  # key ids register_key is adding right now
        self.budget_templates: list[BudgetSpec] = client_templates(config)
        self.rate_limits = rate_limits(config)
        self.clients = {c.id: c for c in config.clients}
        self.policy_book = PolicyBook(
            config.policies, universe=self.policy_universe, wall_offset=lambda: self.wall_offset
        )
        # Bounded: clients choose model names, so a cache keyed by them must not grow with what they invent.
        self._price_cache: OrderedDict[tuple[str, str], ModelPrice | None] = OrderedDict()
        self._ids = itertools.count(1)
        self._key_refs: dict[str, ActorRef[KeyCommand]] = {}
        self._providers: dict[str, ProviderActor] = {}
        self._router: RouterActor | None = None
        self._budgets: BudgetActor | None = None
        self.shared: SharedLimits | None = None  # set while running with [store] kind = "redis" (open.py)

    # -- Deps -----------------------------------------------------------------------------------------

    def check(self, operation: str) -> None:
        self.tree_root(operation)

    def tree_root(self, operation: str = "this call") -> Supervisor:
        if not self.running or self.root is None:
            raise RouterNotRunning(operation)
        return self.root

    def next_id(self) -> int:
        return next(self._ids)

    @property
    def budgets_enabled(self) -> bool:
        return bool(self.budget_specs or self.budget_templates or self.rate_limits)

    def adapter(self, provider_id: str) -> ProviderAdapter | None:
        return self.adapters.get(provider_id)

    def key_ref(self, key_id: str) -> ActorRef[KeyCommand]:
        ref = self._key_refs.get(key_id)
        if ref is not None and ref.alive:
            return ref
        provider = self.key_provider.get(key_id)
        if provider is None:
            raise UnknownKey(key_id)
        actor = self._keys_sup(provider).child(f"key:{key_id}")
        if not isinstance(actor, KeyActor):
            raise ActorStopped(f"key:{key_id}", "is restarting")
        self._key_refs[key_id] = actor.ref
        return actor.ref

    async def apply_shared(self, key_id: str, change: ApplyShared) -> None:
        """A bench another instance published: to this instance's key actor (a key not here is skipped)."""
        try:
            ref = self.key_ref(key_id)
        except (UnknownKey, UnknownProvider, ActorStopped, RouterNotRunning):
            return
        with contextlib.suppress(ActorStopped):
            await ref.tell(change)

    def provider(self, provider_id: str) -> ProviderActor:
        actor = self._providers.get(provider_id)
        if actor is not None and actor.status == "running":
            return actor
        found = self._provider_sup(provider_id).child("provider")
        if not isinstance(found, ProviderActor):
            raise ActorStopped(f"provider:{provider_id}", "is restarting")
        self._providers[provider_id] = found
        return found

    def router_actor(self) -> RouterActor:
        actor = self._router
        if actor is None or actor.status != "running":
            found = self.tree_root("route").child("router")
            if not isinstance(found, RouterActor):
                raise ActorStopped("router", "is restarting")
            actor = self._router = found
        return actor

    def router_ref(self) -> ActorRef[RouterCommand]:
        return self.router_actor().ref

    def budget_actor(self) -> BudgetActor:
        actor = self._budgets
        if actor is None or actor.status != "running":
            found = self.tree_root("route").child("budgets")
            if not isinstance(found, BudgetActor):
                raise ActorStopped("budgets", "is restarting")
            actor = self._budgets = found
        return actor

    def client_config(self, client_id: str) -> ClientConfig | None:
        return self.clients.get(client_id)

    def policy_for(
        self,
        model: str,
        client: str | None,
        team: str | None,
        tags: frozenset[str],
        now: float,
        own: tuple[Policy, ...] = (),
    ) -> EffectivePolicy | None:
        return self.policy_book.effective(model, client, team, tags, now, own)

    def reconcile(self, provider: str, model: str, estimated_input: int, max_output: int, usage: Usage) -> None:
        if len(self.ratios) >= 4096 and (provider, model) not in self.ratios:
            return  # bounded: model names come from callers
        # In place: the scoring config holds this very mapping (no copy per answer).
        new = reconcile.learn(
            self.ratios.get((provider, model)),
            estimated_input=estimated_input,
            max_output=max_output,
            actual_input=usage.input_tokens,
            actual_output=usage.output_tokens,
        )
        if new is not None:
            self.ratios[(provider, model)] = new

    def policy_universe(self) -> Universe:
        """What policies may name: the config's parts plus what the library registered since."""
        cfg = self.config
        base = universe_of(cfg.providers, cfg.keys, cfg.teams, cfg.clients)
        extra_providers = set(self.adapters) - {p.id for p in cfg.providers}
        return attrs.evolve(
            base,
            models=None if extra_providers else base.models,
            providers=frozenset(base.providers or ()) | set(self.adapters),
            keys=frozenset(base.keys or ()) | set(self.key_provider),
        )

    async def set_policies(self, policies: Sequence[Policy], *, who: str, action: str = "replace") -> None:
        """Validate and apply a whole policy set, then give the budget actor the policies' budgets."""
        self.policy_book.replace(policies, who=who, now=trio.current_time(), action=action)
        await self.sync_policy_budgets()

    async def sync_policy_budgets(self) -> None:
        kept = [s for s in self.budget_specs if not s.id.startswith("policy:")]
        specs = kept + policy_specs(self.policy_book.policies, self.config.budgets.timezone)
        if specs == self.budget_specs:
            return
        self.budget_specs = specs
        if self.running:
            msg = SetBudgets(tuple(specs), tuple(self.budget_templates), tuple(self.rate_limits))
            await self.budget_ref().tell(msg)

    def budget_ref(self) -> ActorRef[BudgetCommand]:
        return self.budget_actor().ref

    # -- the tree -------------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self.events.publish(event)

    def record_attempt(self, ev: RequestAttempted) -> None:
        """Every upstream attempt, for the store's decision trail. Called inline by the event bus on the
        request path, so it cannot wait: rows past the store's bound (a stalled backend) are dropped,
        counted and logged."""
        router = self._router
        decision = router.lookup(ev.decision_id) if router is not None else None
        outcome = ev.failure.value if ev.failure is not None else "ok"
        row = DecisionRow(
            ev.request_id, ev.decision_id, ev.key, ev.provider, decision.model if decision is not None else None,
            ev.client, outcome, ev.attempt, ev.latency_s, ev.at,
        )
        pending = self.store_port.pending
        if not pending.full:
            pending.put_rows((row,))
        else:
            self.decisions_dropped += 1
            if self.decisions_dropped % 1000 == 1:
                log.warning("store_decision_rows_dropped", dropped=self.decisions_dropped)

    def make_store(self) -> StoreWriter:
        cfg = self.config.store
        writer = StoreWriter(self.store_state, flush_interval=cfg.flush_interval)
        self.store_port.bind(writer.ref)  # the first instance's ref is the address's, for every restart
        return writer

    def make_budgets(self) -> BudgetActor:
        return BudgetActor(
            self.budget_specs,
            store=self.store_port,
            events=self.events,
            templates=self.budget_templates,
            limits=self.rate_limits,
            wall_offset=self.wall_offset,
            later=self.set_after_start,
        )

    def set_after_start(self, budget_id: str) -> bool:
        """A key budget `register_key` may set again once running (not a configured key's: the config says)."""
        return budget_id.startswith("key:") and all(f"key:{k.id}" != budget_id for k in self.config.keys)

    def make_router(self) -> RouterActor:
        return RouterActor(
            board=self.board,
            events=self.events,
            prices=self.lookup_price,
            scoring=self.scoring,
            wall_offset=self.wall_offset,
            retention=self.config.server.decision_retention,
        )

    def lookup_price(self, provider: str, model: str) -> ModelPrice | None:
        # Cached per provider: the router asks for every re-indexed key. remove_provider clears it.
        cache = self._price_cache
        try:
            price = cache[provider, model]
        except KeyError:
            adapter = self.adapters.get(provider)
            price = cache[provider, model] = _price_of(adapter, model) if adapter is not None else None
            if len(cache) > PRICE_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end((provider, model))
        return price

    def _providers_sup(self) -> Supervisor:
        sup = self.tree_root().child("providers")
        if not isinstance(sup, Supervisor):
            raise ActorStopped("providers", "is restarting")
        return sup

    def _provider_sup(self, provider_id: str) -> Supervisor:
        sup = self._providers_sup().child(f"provider:{provider_id}")
        if not isinstance(sup, Supervisor):
            raise UnknownProvider(provider_id)
        return sup

    def _keys_sup(self, provider_id: str) -> Supervisor:
        sup = self._provider_sup(provider_id).child("keys")
        if not isinstance(sup, Supervisor):
            raise ActorStopped(f"provider:{provider_id}/keys", "is restarting")
        return sup

    # -- providers ------------------------------------------------------------------------------------

    async def register_provider(self, provider_id: str, adapter: ProviderAdapter) -> None:
        if provider_id in self.adapters:
            raise ValueError(f"provider {provider_id!r} is already registered")
        self.check("register_provider")
        self.adapters[provider_id] = adapter
        spec = provider_child(
            provider_id,
            adapter,
            board=self.board,
            events=self.events,
            grace=self.config.server.grace_period,
            on_event=self.on_event,
        )
        await self._providers_sup().add_child(spec)
        log.info("provider_registered", provider=provider_id, kind=adapter.kind)

    async def remove_provider(self, provider_id: str) -> None:
        """Stop a provider's subtree (its keys first) and forget it."""
        for key_id in [k for k, p in self.key_provider.items() if p == provider_id]:
            await self.remove_key(key_id)
        await self._providers_sup().remove_child(f"provider:{provider_id}")
        self.adapters.pop(provider_id, None)
        self._providers.pop(provider_id, None)
        self._price_cache = OrderedDict((k, v) for k, v in self._price_cache.items() if k[0] != provider_id)
        self.board.providers.pop(provider_id, None)

    # -- keys -----------------------------------------------------------------------------------------

    def key_settings(self, kcfg: Any) -> KeySettings:
        """Settings of a `[[keys]]` entry."""
        limits = {"rpm": kcfg.rpm, "tpm": kcfg.tpm, "rpd": kcfg.rpd, "tokens_per_month": kcfg.tokens_per_month}
        return self.settings(
            kcfg.id, kcfg.provider, kcfg.models, kcfg.metadata, limits, kcfg.max_in_flight, kcfg.budget
        )

    def settings(
        self,
        key_id: str,
        provider: str,
        models: Iterable[str],
        metadata: Mapping[str, str],
        limits: Mapping[str, int | None],
        max_in_flight: int | None,
        budget: Decimal | None,
    ) -> KeySettings:
        """A key actor's settings: the key's own fields plus the router-wide capacity, breaker and failure rules."""
        cfg = self.config
        return KeySettings(
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
            breaker=cfg.breaker,
            max_in_flight=max_in_flight,
            budget=budget,
            failures=cfg.failures,  # shared, read-only (Mapping): a copy per key was ~0.6 KiB of each
            default_throttle_s=cfg.routing.default_retry_after,
        )

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
        self.check("register_key")
        if provider not in self.adapters:
            raise UnknownProvider(provider)
        material = _material(secret)
        kid = key_id or f"{provider}-{material.fingerprint[3:11]}"
        if not valid_id(kid):
            raise InvalidRequest(
                "a key id is 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", param="id"
            )
        limits = dict(limits or {})
        unknown = set(limits) - {"rpm", "tpm", "rpd", "tokens_per_month"}
        if unknown:
            raise InvalidRequest(f"unknown limits: {sorted(unknown)}", param="limits")
        settings = self.settings(kid, provider, models or (), metadata or {}, limits, max_in_flight, budget)
        if kid in self.key_provider or kid in self._adding:
            raise InvalidRequest(f"key {kid!r} is already registered", param="id")
        self._adding.add(kid)  # held across the awaits below: a second add of this id is refused
        try:
            if budget is None:
                return await self.register(kid, material, provider, settings)
            # Set before the key exists: the budget actor reads its mailbox in order, so the first hold of
            # the key's first request comes after it and is held against it. The period is a configured
            # key's: the calendar month in budgets.timezone.
            month = CalendarPeriod("month", self.config.budgets.timezone)
            spec = BudgetSpec(f"key:{kid}", Decimal(budget), calendar=month)
            self.api_budgets[kid] = spec
            self.budget_specs.append(spec)
            await self.budget_ref().tell(SetBudget(spec))
            try:
                return await self.register(kid, material, provider, settings)
            except BaseException:
                with trio.CancelScope(shield=True):  # no budget stays behind for a key that was not added
                    await self._drop_api_budget(kid, spec)
                raise
        finally:
            self._adding.discard(kid)

    async def _drop_api_budget(self, kid: str, spec: BudgetSpec) -> None:
        self.api_budgets.pop(kid, None)
        self.budget_specs = [s for s in self.budget_specs if s is not spec]
        if self.running:
            msg = SetBudgets(tuple(self.budget_specs), tuple(self.budget_templates), tuple(self.rate_limits))
            with contextlib.suppress(ActorStopped, MailboxFull, RouterNotRunning):
                await self.budget_ref().tell(msg)

    async def register(self, key_id: str, secret: Secret, provider: str, settings: KeySettings) -> APIKey:
        if key_id in self.key_provider:
            raise InvalidRequest(f"key {key_id!r} is already registered", param="id")
        adapter = self.adapters.get(provider)
        if adapter is None:
            raise UnknownProvider(provider)
        if not settings.models and adapter.capabilities.models:
            # A key serves what its provider declares unless the key itself says less.
            settings = attrs.evolve(settings, models=adapter.capabilities.models)
        self.key_provider[key_id] = provider
        spec = key_child(
            settings,
            secret,
            store=self.store_port,
            board=self.board,
            events=self.events,
            wall_offset=self.wall_offset,
            grace=self.config.server.grace_period,
        )
        try:
            actor = await self._keys_sup(provider).add_child(spec)
        except BaseException:
            del self.key_provider[key_id]
            raise
        if isinstance(actor, KeyActor):
            self._key_refs[key_id] = actor.ref
        api_key = APIKey(id=key_id, provider=provider, fingerprint=secret.fingerprint, metadata=dict(settings.metadata))
        self.key_meta[key_id] = api_key
        self.events.publish(KeyRegistered(key_id, provider, trio.current_time()))
        log.info("key_registered", key=key_id, provider=provider, fingerprint=secret.fingerprint)
        return api_key

    async def remove_key(self, key_id: str) -> None:
        """Stop the key's actor and forget it (its stored record is kept for audit)."""
        provider = self.key_provider.get(key_id)
        if provider is None:
            raise UnknownKey(key_id)
        await self._keys_sup(provider).remove_child(f"key:{key_id}")
        del self.key_provider[key_id]
        self.key_meta.pop(key_id, None)
        self._key_refs.pop(key_id, None)
        self.board.remove_key(key_id)

    async def operate(self, key_id: str, action: Action, reason: str, secret: Secret | None = None) -> None:
        self.check(action)
        ref = self.key_ref(key_id)
        refused: str | None = await ref.ask(lambda r: Operate(action, reason, r, secret))
        if refused is not None:
            raise InvalidRequest(f"cannot {action} key {key_id}: {refused}", param="state")

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        action = _STATE_ACTIONS.get(state)
        if action is None:
            raise InvalidRequest(f"unknown key state {state!r}: use disabled, active or revoked", param="state")
        await self.operate(key_id, action, reason or f"{action}d by operator")

    async def rotate_key(self, key_id: str, new_secret: str | Secret) -> None:
        material = _material(new_secret)
        await self.operate(key_id, "rotate", "key material rotated", material)
        meta = self.key_meta.get(key_id)
        if meta is not None:
            self.key_meta[key_id] = attrs.evolve(meta, fingerprint=material.fingerprint)

    async def stored_secret_differs(self, key_id: str, secret: Secret) -> bool:
        """Is the key's stored record for other material than `secret`? (Records keep fingerprints.)"""
        record = await self.store_port.load("key", key_id)
        current = getattr(record, "fingerprint", None)
        return isinstance(current, str) and current != secret.fingerprint

    # -- config ---------------------------------------------------------------------------------------

    async def load_config(self) -> None:
        from apikeyrouter.adapters.factory import adapter_from_config

        for pcfg in self.config.providers:
            await self.register_provider(pcfg.id, adapter_from_config(pcfg))
        for kcfg in self.config.keys:
            await self.register(kcfg.id, kcfg.secret, kcfg.provider, self.key_settings(kcfg))
            if await self.stored_secret_differs(kcfg.id, kcfg.secret):
                # Restored from a store, for material since changed (rotated, or edited in the config).
                try:
                    await self.operate(kcfg.id, "rotate", "key material from the config", kcfg.secret)
                except InvalidRequest as exc:  # a revoked key stays revoked
                    log.warning("stored_key_not_rotated", key=kcfg.id, reason=str(exc))
            if not kcfg.enabled:
                await self.update_key_state(kcfg.id, "disabled", reason="disabled in config")

    def apply_routing(self, new: RouterConfig) -> None:
        self.config = new
        self.clients = {c.id: c for c in new.clients}
        self.routing.objective = parse_objective(new.routing.objective)
        self.routing.max_attempts = new.routing.max_attempts
        self.routing.wait_for_reset = new.routing.wait_for_reset
