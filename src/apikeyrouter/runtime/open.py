"""`open_router` and `ApiKeyRouter`: the embedded router, composed of its parts.

    async with open_router(config) as router:      # or: async with ApiKeyRouter(config) as router:
        response = await router.route({...})

`open_router` owns a nursery for the supervision tree (tree.py), starts it, registers the providers and
keys of the config, yields the facade, and stops the tree in reverse order on exit: services (proxy,
debug) drain first while the router and the keys still serve the requests they let finish. The facade
composes a `Registry` (providers, keys, operator commands, the actors' refs), a `Pipeline` (the request
path, given the registry as its explicit dependencies) and the views (views.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from types import TracebackType
from typing import Any

import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.router import RouterActor
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.config import RouterConfig, default_config, structure_policies
from apikeyrouter.domain.history import HistoryRow, StateQuery
from apikeyrouter.domain.policy import Policy
from apikeyrouter.domain.request import RequestIntent, StreamChunk, SystemResponse
from apikeyrouter.domain.scoring import ScoringConfig, Weights
from apikeyrouter.errors import ActorStopped, InvalidRequest, RouterNotRunning, UnknownProvider
from apikeyrouter.kernel.actor import ActorRef, TreeNode
from apikeyrouter.kernel.spec import ChildSpec
from apikeyrouter.messages.key import KeyCommand
from apikeyrouter.messages.provider import ProviderCommand
from apikeyrouter.messages.router import RouterCommand
from apikeyrouter.messages.store import Flush, Query
from apikeyrouter.observe import EventBus
from apikeyrouter.runtime import views
from apikeyrouter.runtime.api import APIKey
from apikeyrouter.runtime.deps import Routing, parse_objective
from apikeyrouter.runtime.dryrun import DryRunRequest, dry_run, requests_from_decisions
from apikeyrouter.runtime.pipeline import Pipeline, RoutedStreamHandle
from apikeyrouter.runtime.policies import PolicyRejected, RequestPolicy, policy_json, request_policies
from apikeyrouter.runtime.registry import Registry
from apikeyrouter.runtime.reload import apply_config
from apikeyrouter.runtime.tree import root_supervisor
from apikeyrouter.secret import Secret
from apikeyrouter.store.backend import StateStore
from apikeyrouter.store.health import store_health
from apikeyrouter.store.open import store_from_config
from apikeyrouter.store.redis_shared import SharedLimits, open_shared

__all__ = ["ApiKeyRouter", "open_router"]

Objective = str | Weights | Mapping[str, float] | None
_NOT_NOW = (ActorStopped, RouterNotRunning, UnknownProvider)  # not running, or that part is restarting


class ApiKeyRouter:
    """Route LLM calls across many keys. Use as `async with open_router(config) as router:` (or
    `async with ApiKeyRouter(config) as router:`)."""

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        store: StateStore | None = None,
        objective: Objective = None,
        max_attempts: int | None = None,
        events: EventBus | None = None,
        scoring: ScoringConfig | None = None,
        max_wait: float = 60.0,
    ) -> None:
        """`max_wait`: with no caller deadline, the longest a request waits for a key to recover."""
        config = config or default_config()
        routing = config.routing
        settings = Routing(
            objective=parse_objective(objective if objective is not None else routing.objective),
            max_attempts=max_attempts if max_attempts is not None else routing.max_attempts,
            wait_for_reset=routing.wait_for_reset,
            max_wait=max_wait,
        )
        self._registry = Registry(
            config,
            settings,
            store=store if store is not None else store_from_config(config.store),  # an empty store is falsy
            events=events if events is not None else EventBus(),
            scoring=scoring or ScoringConfig(),
        )
        self._pipeline = Pipeline(self._registry)
        self._lifetime: AbstractAsyncContextManager[None] | None = None

    # -- lifetime -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        reg = self._registry
        if reg.running:
            raise RuntimeError("this router is already running")
        # Wall clock only to render times for humans; every rule runs on trio's clock.
        reg.wall_offset = reg.events.wall_offset
        root = reg.root = root_supervisor(
            on_event=reg.on_event,
            make_store=reg.make_store,
            make_budgets=reg.make_budgets,
            make_router=reg.make_router,
            grace=reg.config.server.grace_period,
        )
        # Read before the tree starts: a corrupt or newer file is one StoreError, and no actor waits on it.
        reg.store_state.latest.update(await reg.store.open(reg.wall_offset))
        # With [store] kind = "redis": the shared limits run outside the tree, up before it and down after.
        async with open_shared(
            reg.config.store,
            reg.events,
            lambda: reg.budget_specs,
            reg.apply_shared,
            lambda: reg.budget_templates,
            lambda: reg.rate_limits,
        ) as shared:
            reg.shared = shared
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(root.run)
                    reg.running = True
                    try:
                        await reg.load_config()
                        yield
                    finally:
                        root.stop()
            finally:
                reg.running = False
                reg.shared = None

    async def __aenter__(self) -> ApiKeyRouter:
        lifetime = self._running()
        await lifetime.__aenter__()
        self._lifetime = lifetime
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._lifetime is not None, "ApiKeyRouter exited without being entered"
        return await self._lifetime.__aexit__(exc_type, exc, tb)

    @property
    def running(self) -> bool:
        return self._registry.running

    @property
    def config(self) -> RouterConfig:
        return self._registry.config

    @property
    def events(self) -> EventBus:
        return self._registry.events

    @property
    def board(self) -> SnapshotBoard:
        return self._registry.board

    @property
    def store(self) -> StateStore:
        return self._registry.store

    async def query_state(self, query: StateQuery) -> list[HistoryRow]:
        """History from the store: transitions, decisions (attempts) or budget movements, newest first."""
        ref = self._registry.store_port.require()
        rows: list[HistoryRow] = await ref.ask(lambda r: Query(query, r))
        return rows

    async def flush_store(self) -> None:
        """Wait until every change told to the store so far is written."""
        await self._registry.store_port.require().ask(Flush)

    @property
    def shared(self) -> SharedLimits | None:
        """The shared limits on Redis while running with `[store] kind = "redis"`; else None."""
        return self._registry.shared

    def store_status(self) -> dict[str, Any] | None:
        """Redis reachability, live instances and mode (shared / local share); None without Redis."""
        shared = self._registry.shared
        return shared.status() if shared is not None else None

    def store_health(self) -> dict[str, Any]:
        """Whether the store (SQLite, Redis, memory) is failing, why, and its failure and drop counts."""
        reg = self._registry
        return store_health(reg.store_state, reg.shared, reg.decisions_dropped)

    @property
    def objective(self) -> str | Weights:
        return self._registry.routing.objective

    @property
    def max_attempts(self) -> int:
        return self._registry.routing.max_attempts

    # -- requests -------------------------------------------------------------------------------------

    async def route(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> SystemResponse:
        """Send one chat request through the best key now, failing over as needed.

        The deadline is the caller's: wrap the call in `trio.fail_after(...)`. Raises `NoKeyAvailable`,
        `UnknownModel`, `BudgetExceeded`, `InvalidRequest`, or the last `UpstreamError`. `client` (who
        sent it) is carried into the response's metadata and the `request.attempt` events. `policy`: this
        request's own policy (a table or `Policy`, or a list of them; scope `request`, the most specific),
        validated like any other (`PolicyRejected`, an `InvalidRequest`, naming the field).
        """
        own = self.request_policies(policy)
        return await self._pipeline.route(intent, objective=objective, client=client, policies=own)

    def stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> AbstractAsyncContextManager[RoutedStreamHandle]:
        """Open a routed stream. Failover happens only before the first chunk is handed over; after it,
        an upstream failure raises `StreamInterrupted` from the iteration, and the usage seen is settled."""
        own = self.request_policies(policy)
        return self._pipeline.stream(intent, objective=objective, client=client, policies=own)

    def request_policies(self, policy: RequestPolicy | None, *, param: str = "policy") -> tuple[Policy, ...]:
        """A request's own policies, validated (`PolicyRejected` with `param`); () for None."""
        return () if policy is None else request_policies(self._registry.policy_book, policy, param=param)

    async def route_stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """`async for chunk in router.route_stream(...)`: the simple form of `stream()`."""
        async with self.stream(intent, objective=objective, client=client, policy=policy) as handle:
            async for chunk in handle:
                yield chunk

    # -- registration and operator commands -----------------------------------------------------------

    async def register_provider(self, provider_id: str, adapter: ProviderAdapter) -> None:
        await self._registry.register_provider(provider_id, adapter)

    async def remove_provider(self, provider_id: str) -> None:
        """Stop a provider's subtree (its keys first) and forget it."""
        await self._registry.remove_provider(provider_id)

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
        return await self._registry.register_key(
            secret,
            provider,
            metadata,
            key_id=key_id,
            limits=limits,
            models=models,
            max_in_flight=max_in_flight,
            budget=budget,
        )

    async def remove_key(self, key_id: str) -> None:
        """Stop the key's actor and forget it (its stored record is kept for audit)."""
        await self._registry.remove_key(key_id)

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        """Operator: `disabled` / `active` (enable) / `revoked`."""
        await self._registry.update_key_state(key_id, state, reason)

    async def rotate_key(self, key_id: str, new_secret: str | Secret) -> None:
        await self._registry.rotate_key(key_id, new_secret)

    async def revoke_key(self, key_id: str, reason: str = "revoked by operator") -> None:
        """No new requests use the key; requests already in flight finish and settle."""
        await self._registry.operate(key_id, "revoke", reason)

    async def apply_config(self, new: RouterConfig) -> dict[str, list[str]]:
        """Bring the running router to `new` (a SIGHUP reload); returns what changed, by id."""
        return await apply_config(self._registry, new)

    async def add_service(self, spec: ChildSpec) -> Any:
        """Run another child under the root supervisor (the standalone process adds the proxy and the
        debug channel this way); it is stopped, in reverse order, before the router and the providers."""
        return await self._registry.tree_root("add_service").add_child(spec)

    def key_ref(self, key_id: str) -> ActorRef[KeyCommand]:
        """The key actor's address (`ActorRef[KeyCommand]`), e.g. to inject a crash in a chaos test."""
        return self._registry.key_ref(key_id)

    def router_ref(self) -> ActorRef[RouterCommand]:
        """The router actor's address, the one the request path asks for decisions."""
        return self._registry.router_ref()

    def provider_ref(self, provider_id: str) -> ActorRef[ProviderCommand]:
        """The provider actor's address; like `key_ref`, it stays the same across restarts."""
        return self._registry.provider(provider_id).ref

    # -- views ----------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        found: set[str] = set()
        for provider_id, adapter in self._registry.adapters.items():
            declared = adapter.capabilities.models
            for snap in self.board.keys.values():
                if snap.provider == provider_id:
                    found |= snap.models or declared
        return sorted(found)

    def ready(self) -> bool:
        if not self.running:
            return False
        now = trio.current_time()
        return any(s.available_at(now) == now for s in self.board.keys.values())

    def keys(self) -> list[dict[str, Any]]:
        return views.keys_json(self.board, trio.current_time(), self._registry.wall_offset)

    def key(self, key_id: str) -> dict[str, Any] | None:
        snap = self.board.keys.get(key_id)
        return views.key_json(snap, trio.current_time(), self._registry.wall_offset) if snap is not None else None

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return views.transitions_json(self.board.keys.get(key_id), limit, self._registry.wall_offset)

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        actor = self.router_actor()
        return [d.to_json() for d in actor.recent(limit)] if actor is not None else []

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        actor = self.router_actor()
        found = actor.lookup(decision_id) if actor is not None else None
        return found.to_json() if found is not None else None

    def router_actor(self) -> RouterActor | None:
        """The running router actor (its recent decisions, or `decide` called directly in a benchmark);
        None while the router is not running or the actor restarts."""
        try:
            return self._registry.router_actor()
        except _NOT_NOW:  # not running, or restarting: no decisions to show right now
            return None

    def budgets(self) -> dict[str, Any]:
        """Every budget: {id: {"limit", "spent", "reserved"}} (money as strings); {} when none."""
        try:
            summary: dict[str, Any] = self._registry.budget_actor().state_summary()
        except _NOT_NOW:
            return {}
        return summary

    async def shared_budgets(self) -> dict[str, Any]:
        """`budgets()`, with every instance's spend from Redis under `[store] kind = "redis"` (one round trip;
        this instance's own under `local`, `scope` says which); else `budgets()` as it is."""
        shared = self._registry.shared
        local = self.budgets()
        return local if shared is None or not local else await shared.shared_budgets(local)

    # -- policies -------------------------------------------------------------------------------------

    def policies(self) -> list[dict[str, Any]]:
        """Every live policy, as JSON values, in the order they were configured."""
        return [policy_json(p) for p in self._registry.policy_book.policies]

    def policy_audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest policy changes, oldest first: who, when, action, the policy before and after."""
        return list(self._registry.policy_book.audit)[-limit:] if limit > 0 else []

    def validate_policies(self, policies: Sequence[Policy | Mapping[str, Any]]) -> list[str]:
        """Every problem of this policy set (`policies[3].match.models: unknown model 'gpt-5o'`); []: valid."""
        return self._checked(policies)[1]

    def _checked(self, policies: Sequence[Policy | Mapping[str, Any]]) -> tuple[list[Policy], list[str]]:
        parsed, errors, indexes = _policies(policies)
        errors += self._registry.policy_book.check(parsed, indexes)
        return parsed, sorted(errors, key=_error_order)

    async def set_policies(self, policies: Sequence[Policy | Mapping[str, Any]], *, who: str = "library") -> None:
        """Replace the whole set: validated first, applied at once (`PolicyRejected`: nothing changed)."""
        parsed, errors = self._checked(policies)
        if errors:
            raise PolicyRejected(errors)
        await self._registry.set_policies(parsed, who=who)

    async def configure_policy(self, policy: Policy | Mapping[str, Any], *, who: str = "library") -> None:
        """Add a policy, or replace the live one with its id (validated with the rest of the set)."""
        book = self._registry.policy_book
        parsed, errors, _ = _policies([policy])
        if errors:
            raise PolicyRejected(errors)
        kept = [p for p in book.policies if p.id != parsed[0].id]
        at = next((i for i, p in enumerate(book.policies) if p.id == parsed[0].id), len(kept))
        await self._registry.set_policies([*kept[:at], parsed[0], *kept[at:]], who=who, action="configure")

    async def remove_policy(self, policy_id: str, *, who: str = "library") -> bool:
        """Remove a live policy; False when there is none with that id."""
        book = self._registry.policy_book
        if book.get(policy_id) is None:
            return False
        await self._registry.set_policies([p for p in book.policies if p.id != policy_id], who=who, action="remove")
        return True

    def dry_run_policy(
        self,
        policies: Sequence[Policy | Mapping[str, Any]],
        requests: Sequence[DryRunRequest | Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """What `policies` would change if they replaced the live set: each request (default: the
        recent decisions) decided under both against the current keys. Nothing sent, nothing changed.
        Given requests have their tokens counted here: a tokenizer table not loaded yet is built on the
        spot (~0.2 s; `apikeyrouter.adapters.warm()` in a worker thread first avoids that)."""
        parsed, errors = self._checked(policies)
        if errors:
            raise PolicyRejected(errors)
        router = self._registry.router_actor()
        if requests is None:
            reqs = requests_from_decisions([d.to_json() for d in router.recent(router.retained())])
        else:
            reqs = [r if isinstance(r, DryRunRequest) else _dry_request(r) for r in requests]
        return dry_run(self._registry, router, parsed, reqs, trio.current_time())

    def get_budget_status(self, scope: str) -> dict[str, Any] | None:
        """One budget ("global", "provider:openai", "key:k1", "team:search", "client:acme", "policy:p"):
        limit, spent, reserved, remaining, mode, period start/end, burn rate, projected exhaustion and its
        confidence (money as strings). None when there is no such budget."""
        try:
            return self._registry.budget_actor().status_of(scope)
        except _NOT_NOW:
            return None

    def tree(self) -> TreeNode:
        root = self._registry.root
        if root is None:
            return TreeNode(name="root", kind="supervisor", status="stopped", restarts=0)
        return root.tree()

    def get_state_summary(self) -> dict[str, Any]:
        reg = self._registry
        providers = []
        for pid in reg.adapters:
            try:
                providers.append(reg.provider(pid).provider_snapshot())
            except _NOT_NOW:  # restarting: its last published snapshot
                snap = self.board.providers.get(pid)
                if snap is not None:
                    providers.append(snap)
        summary = views.state_summary(
            running=self.running,
            ready=self.ready(),
            objective=self.objective,
            max_attempts=self.max_attempts,
            providers=providers,
            keys=self.keys(),
            budgets=self.budgets(),
            tree=self.tree(),
        )
        summary["reconcile"] = self.reconcile_ratios()
        summary["policies"] = [p["id"] for p in self.policies()]
        summary["clients"] = sorted(c.id for c in reg.config.clients)
        return summary

    def reconcile_ratios(self) -> dict[str, dict[str, Any]]:
        """Per "provider/model": actual output / max_tokens and actual input / our estimate, as learned."""
        return {
            f"{p}/{m}": {"output_ratio": round(r.output, 4), "input_ratio": round(r.input, 4), "samples": r.samples}
            for (p, m), r in sorted(self._registry.ratios.items())
        }


def _policies(items: Sequence[Policy | Mapping[str, Any]]) -> tuple[list[Policy], list[str], list[int]]:
    """Policy values as given, or structured from tables like the config's."""
    if all(isinstance(p, Policy) for p in items):
        return [p for p in items if isinstance(p, Policy)], [], list(range(len(items)))
    return structure_policies([p if isinstance(p, Mapping) else policy_json(p) for p in items])


def _error_order(error: str) -> tuple[int, str]:
    """Errors in the order of the policies they are about."""
    head = error.partition("]")[0].removeprefix("policies[")
    return (int(head) if head.isdigit() else -1), error


def _dry_request(raw: Mapping[str, Any]) -> DryRunRequest:
    """A dry-run request from a table: `model` (or an OpenAI body with messages), `client`, `tags`; or a
    recorded decision (`GET /decisions`), whose `input_tokens` and `max_tokens` price its worst case."""
    if not isinstance(raw.get("model"), str):
        raise InvalidRequest("each dry-run request needs a model", param="requests")
    intent = RequestIntent.from_openai(raw) if "messages" in raw else None
    tags = raw.get("tags", ())
    given, most = raw.get("input_tokens"), raw.get("max_tokens")
    return DryRunRequest(
        model=raw["model"],
        client=raw.get("client") if isinstance(raw.get("client"), str) else None,
        tags=frozenset(t for t in tags if isinstance(t, str)) if isinstance(tags, list | tuple) else frozenset(),
        objective=raw["objective"] if isinstance(raw.get("objective"), str) and raw["objective"] != "custom" else None,
        intent=intent,
        request_id=str(raw.get("request_id", "")),
        input_tokens=given if intent is None and isinstance(given, int) and given >= 0 else None,
        max_tokens=most if intent is None and isinstance(most, int) and most >= 0 else None,
    )


@asynccontextmanager
async def open_router(config: RouterConfig | None = None, **kwargs: Any) -> AsyncIterator[ApiKeyRouter]:
    """`async with open_router(config) as router:` — the same config object `serve` loads from TOML.
    Owns the router's nursery: the supervision tree runs while the block does."""
    router = ApiKeyRouter(config, **kwargs)
    async with router._running():
        yield router
