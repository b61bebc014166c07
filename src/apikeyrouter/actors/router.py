"""`RouterActor`: decisions only. It never awaits upstream I/O; its receive loop is plain `def`.

It keeps a `KeyIndex` (domain/index.py) fed from the views key actors publish on the board (each
built by its key when the router reads it, from the state of the key's last change): each decision
first re-indexes only the keys changed since the last one, then takes the top candidates, so
a decision costs the same with 10 keys or 10,000. Each `RoutingDecision` carries the ranked candidates
with their score breakdowns and, for keys left out, why (bounded: counts by kind plus examples).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, assert_never

import structlog
import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.decision import Candidate, RoutingDecision
from apikeyrouter.domain.index import KeyIndex
from apikeyrouter.domain.keystate import KeySnapshot
from apikeyrouter.domain.policy import EffectivePolicy
from apikeyrouter.domain.scoring import KeyView, ScoringConfig, Weights, weights_for
from apikeyrouter.domain.view import quality_of, snapshot_view
from apikeyrouter.kernel.actor import Actor, Reply
from apikeyrouter.messages.router import Decide, RouterCommand
from apikeyrouter.observe import EventBus

__all__ = ["RouterActor"]

log = structlog.get_logger("apikeyrouter.router")

PriceLookup = Callable[[str, str], ModelPrice | None]  # (provider, model) -> price



class _Prices(Mapping[str, ModelPrice]):
    """A provider's price table seen as a mapping, looked up lazily (keys that serve any model)."""

    __slots__ = ("_lookup", "_provider")

    def __init__(self, provider: str, lookup: PriceLookup) -> None:
        self._provider = provider
        self._lookup = lookup

    def __getitem__(self, model: str) -> ModelPrice:
        price = self._lookup(self._provider, model)
        if price is None:
            raise KeyError(model)
        return price

    def get(self, model: str, default: Any = None) -> Any:
        price = self._lookup(self._provider, model)
        return default if price is None else price

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def view_of(snap: KeySnapshot, prices: Mapping[str, ModelPrice], degraded: bool) -> KeyView:
    """The scoring view of a key snapshot. A degraded provider halves its keys' reliability."""
    return snapshot_view(snap, prices, quality=quality_of(snap.metadata), degraded=degraded)


class RouterActor(Actor[RouterCommand]):
    kind = "router"

    def __init__(
        self,
        *,
        board: SnapshotBoard,
        events: EventBus,
        prices: PriceLookup,
        scoring: ScoringConfig | None = None,
        wall_offset: float = 0.0,
        retention: int = 1000,
        mailbox: int = 1024,
    ) -> None:
        super().__init__("router", mailbox=mailbox)
        self._board = board
        self._events = events
        self._price_lookup = prices
        self._scoring = scoring or ScoringConfig()
        self._wall_offset = wall_offset
        self._index = KeyIndex(self._scoring, wall_offset=wall_offset)
        self._decisions: OrderedDict[str, RoutingDecision] = OrderedDict()
        self._retention = retention
        self._ids = itertools.count(1)
        self._prices: dict[str, _Prices] = {}
        self.decided = 0

    async def pre_start(self) -> None:
        # A restarted router rebuilds its index from every published snapshot.
        self._board.drain()
        for key_id in list(self._board.keys):
            self._index_key(key_id)

    def state_summary(self) -> dict[str, int]:
        return {"keys_indexed": len(self._index), "decisions": self.decided, "retained": len(self._decisions)}

    def receive(self, msg: RouterCommand) -> None:
        match msg:
            case Decide():
                msg.reply_to.send(self.decide(msg))
            case _:
                assert_never(msg)

    def recent(self, limit: int) -> list[RoutingDecision]:
        """The latest retained decisions, oldest first (a read of frozen values)."""
        return list(self._decisions.values())[-limit:] if limit > 0 else []

    def retained(self) -> int:
        """How many decisions are retained."""
        return len(self._decisions)

    def lookup(self, decision_id: str) -> RoutingDecision | None:
        return self._decisions.get(decision_id)

    # -- deciding -------------------------------------------------------------------------------------

    def _index_key(self, key_id: str) -> None:
        """(Re)index one key from its view on the board (built from the key's latest state)."""
        keys = self._board.keys
        name = keys.provider_of(key_id)
        if name is None:
            return  # removed meanwhile
        prices = self._prices.get(name)
        if prices is None:
            prices = self._prices[name] = _Prices(name, self._price_lookup)
        provider = self._board.providers.get(name)
        view = keys.view(key_id, prices, provider is not None and provider.degraded)
        if view is not None:
            self._index.update(view)

    def _refresh(self) -> None:
        dirty, removed = self._board.drain()
        for key_id in removed:
            self._index.remove(key_id)
        for key_id in dirty:
            self._index_key(key_id)

    def preview(
        self, model: str, objective: str | Weights, policy: EffectivePolicy | None, client: str | None
    ) -> RoutingDecision:
        """The decision this router would make now, neither retained nor counted (a dry run): a plain
        read of the index, run between two messages like any handler."""
        msg = Decide("dry-run", model, objective, frozenset(), Reply(), policy=policy, client=client)
        return self.decide(msg, remember=False)

    def decide(self, msg: Decide, *, remember: bool = True) -> RoutingDecision:
        now = trio.current_time()
        self._refresh()
        model = msg.model
        objective = msg.objective
        weights = weights_for(objective)
        index = self._index
        excluded: dict[str, str] = {}
        policy = msg.policy
        if policy is not None and (policy.filters_keys or policy.fallback):
            candidates, by_policy = self._candidates_under(policy, msg, weights, now, excluded)
        else:
            by_policy = 0
            ranked = index.top(model, weights, now, msg.k + len(msg.exclude))
            candidates = self._candidates(ranked, msg, weights, excluded)
        summary = index.excluded_summary(model, now, limit=5)
        tried_but_eligible = 0
        for key_id in msg.exclude:
            ex = index.exclusion(key_id, model, now)
            if ex is None:
                tried_but_eligible += 1
                excluded[key_id] = f"{key_id}: already tried by this request"
            else:
                excluded[key_id] = ex.reason
        for example in summary.examples:
            excluded.setdefault(example.key_id, example.reason)
        retry_at = None if candidates else index.earliest_available(model, now)
        serving = summary.eligible + summary.excluded
        objective_name = objective if isinstance(objective, str) else "custom"
        by_kind = summary.by_kind if not by_policy else (*summary.by_kind, ("policy", by_policy))
        decision = RoutingDecision(
            id=f"dec-{next(self._ids)}" if remember else "dry-run",
            request_id=msg.request_id,
            at=now,
            model=model,
            objective=objective_name,
            candidates=tuple(candidates),
            excluded=excluded,
            excluded_total=summary.excluded + tried_but_eligible + by_policy,
            excluded_by_kind=by_kind,
            retry_at=retry_at,
            serving=serving,
            wall_offset=self._wall_offset,
            client=msg.client,
            policies=() if policy is None else policy.policies,
            policy_notes=() if policy is None else policy.notes,
            estimates=msg.estimates,
        )
        if remember:
            self._remember(decision)
            self.decided += 1
        return decision

    def _candidates(
        self, ranked: list[tuple[str, float]], msg: Decide, weights: Weights, excluded: dict[str, str]
    ) -> list[Candidate]:
        candidates: list[Candidate] = []
        for key_id, value in ranked:
            if key_id in msg.exclude:
                excluded[key_id] = f"{key_id}: already tried by this request"
                continue
            if len(candidates) >= msg.k:
                break
            view = self._index.view(key_id)
            assert view is not None
            ratio = self._scoring.ratios.get((view.provider, msg.model))
            candidates.append(Candidate(key_id, view.provider, value, view, msg.model, weights, self._scoring, ratio))
        return candidates

    def _candidates_under(
        self, policy: EffectivePolicy, msg: Decide, weights: Weights, now: float, excluded: dict[str, str]
    ) -> tuple[list[Candidate], int]:
        """The top candidates the policy allows, asking the index for more while it filters them out.
        Returns them (in the policy's provider order, if it sets one) and how many keys it excluded."""
        keys = self._board.keys
        want = msg.k + len(msg.exclude)
        ask = want  # most filters exclude few keys: ask for more only when they did
        while True:
            ranked = self._index.top(msg.model, weights, now, ask)
            allowed: list[tuple[str, float]] = []
            dropped = 0
            for key_id, value in ranked:
                snap = keys.get(key_id)
                view = self._index.view(key_id)
                provider = view.provider if view is not None else ""
                by = policy.excluded_by(key_id, provider, snap.metadata if snap is not None else {})
                if by is None:
                    allowed.append((key_id, value))
                    continue
                dropped += 1
                if len(excluded) < 5:
                    excluded[key_id] = f"{key_id}: excluded by policy {by}"
            if len(allowed) >= want or len(ranked) < ask:
                break
            ask *= 4
        if policy.fallback:
            order = {p: i for i, p in enumerate(policy.fallback)}
            allowed.sort(key=lambda kv: order.get(self._provider_of(kv[0]), len(order)))
        return self._candidates(allowed, msg, weights, excluded), dropped

    def _provider_of(self, key_id: str) -> str:
        view = self._index.view(key_id)
        return "" if view is None else view.provider

    def _remember(self, decision: RoutingDecision) -> None:
        self._decisions[decision.id] = decision
        while len(self._decisions) > self._retention:
            self._decisions.popitem(last=False)
