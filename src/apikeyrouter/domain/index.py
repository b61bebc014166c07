"""`KeyIndex`: the router's ranked view of every key, so a decision never scans all keys.

Layout::

    bucket per declared model ─┬─ eligible keys, one sorted list per objective in use   (top-k = a slice)
    + one wildcard bucket      ├─ benched keys, grouped by kind ("throttled", "quota", ...)  (summaries)
                               └─ wake heap: (until, seq, key) for benched keys that recover by themselves

- `update(view)` re-evaluates one key (eligibility at `view.at`, score per objective) and moves it
  between eligible and benched in each bucket it belongs to: O(B·O·log n) comparisons plus a list
  insert (a C memmove), B = buckets of the key, O = sorted lists kept in them.
- `top(model, objective, now, k)` first wakes benched keys whose `until` has passed (a heap peek when
  none are due), then returns the first `k` of the objective's sorted list: O(k) per decision.
- Buckets exist only for models some key declares (a bucket goes when its last declaring key does).
  Keys with an empty model set serve any model: they join every declared bucket and the one wildcard
  bucket. A request for a model no key declares is answered from the wildcard bucket and creates no
  bucket: the model string comes from clients, so asking for invented names must not grow the index
  nor slow down the next decision. `stats()` shows the structure's size.
- Sorted lists per objective are built on first use (O(n log n) once) and kept up to date after
  that. In a declared bucket named objectives stay; at most `max_custom` custom `Weights` are kept,
  least recently used evicted. The wildcard bucket's lists are per (model, objective), since a key's
  price, hence its cost score, depends on the model: at most `max_wild_orders` of them, least
  recently used evicted, and a pair gets one only on its second request among the last
  `ADMISSION_WINDOW` new pairs; before that its top-k is a heap selection over the wildcard keys
  (O(n), no state). So a flood of one-off names neither builds lists nor evicts the lists of the
  models in real use, and a key update touches a bounded number of lists.

Ranking equals `scoring.rank` (the full scan) on the same views — that is the reference model the
property tests check. Scores are those of each key's latest view; time only affects eligibility
(lazily, through the wake heap), so an idle key keeps the score of its last snapshot.

Mutable by design: the index is the RouterActor's private working structure, changed only from its
receive loop. Its inputs and outputs are frozen values.
"""

from __future__ import annotations

import bisect
import heapq
import operator
from collections import OrderedDict

import attrs

from apikeyrouter.domain.scoring import (
    OBJECTIVES,
    Excluded,
    KeyView,
    ScoringConfig,
    Weights,
    eligibility,
    rank_key,
    weights_for,
)

__all__ = ["ADMISSION_WINDOW", "ExclusionSummary", "IndexStats", "KeyIndex"]

ADMISSION_WINDOW = 256  # new (model, objective) pairs remembered for the wildcard's second-request admission

_Rank = tuple[int, int, str, float]
_OrderKey = tuple[str, Weights]  # (model, weights)


@attrs.frozen
class ExclusionSummary:
    """Why keys for a model are not candidates, bounded whatever the key count."""

    model: str
    eligible: int
    excluded: int
    by_kind: tuple[tuple[str, int], ...]  # (kind, count), largest first
    examples: tuple[Excluded, ...]  # a few excluded keys with their reasons, one per kind first
    not_serving: int  # registered keys that do not serve this model at all


@attrs.frozen
class IndexStats:
    """The size of the index's structure: what a decision or a key update may touch."""

    keys: int
    buckets: int  # declared models, plus the wildcard bucket
    orders: int  # sorted lists kept, over all buckets: a key update re-ranks the key in at most this many
    ranked: int  # entries in those lists
    heap: int  # wake-heap entries, over all buckets
    admissions: int  # wildcard (model, objective) pairs seen once, awaiting a second request


class _Order:
    __slots__ = ("rank_of", "ranks")

    def __init__(self) -> None:
        self.ranks: list[_Rank] = []
        self.rank_of: dict[str, _Rank] = {}

    def discard(self, key_id: str) -> None:
        old = self.rank_of.pop(key_id, None)
        if old is not None:
            del self.ranks[bisect.bisect_left(self.ranks, old)]

    def put(self, key_id: str, rank: _Rank) -> None:
        old = self.rank_of.get(key_id)
        if old == rank:
            return
        if old is not None:
            del self.ranks[bisect.bisect_left(self.ranks, old)]
        bisect.insort(self.ranks, rank)
        self.rank_of[key_id] = rank


class _Bucket:
    __slots__ = ("benched", "eligible", "heap", "members", "model", "orders")

    def __init__(self, model: str | None) -> None:
        self.model = model  # None: the wildcard bucket
        self.members: set[str] = set()
        self.eligible: set[str] = set()
        self.orders: OrderedDict[_OrderKey, _Order] = OrderedDict()
        self.benched: dict[str, dict[str, Excluded]] = {}  # kind -> key -> exclusion
        self.heap: list[tuple[float, int, str]] = []


class KeyIndex:
    def __init__(
        self,
        cfg: ScoringConfig | None = None,
        *,
        wall_offset: float = 0.0,
        max_custom: int = 8,
        max_wild_orders: int = 16,
    ) -> None:
        self._cfg = cfg or ScoringConfig()
        self.wall_offset = wall_offset
        self._max_custom = max_custom
        self._max_wild_orders = max_wild_orders
        self._views: dict[str, KeyView] = {}
        self._excluded: dict[str, Excluded | None] = {}
        self._seq: dict[str, int] = {}
        self._declared: dict[str, dict[str, None]] = {}  # model -> keys that name it (ordered sets)
        self._wild_ids: dict[str, None] = {}  # keys that serve any model (an ordered set)
        self._wild = _Bucket(None)
        self._buckets: dict[str, _Bucket] = {}  # declared models only
        self._admission: OrderedDict[_OrderKey, None] = OrderedDict()
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._views

    def view(self, key_id: str) -> KeyView | None:
        return self._views.get(key_id)

    def stats(self) -> IndexStats:
        buckets = [self._wild, *self._buckets.values()]
        return IndexStats(
            keys=len(self._views),
            buckets=len(buckets),
            orders=sum(len(b.orders) for b in buckets),
            ranked=sum(len(o.ranks) for b in buckets for o in b.orders.values()),
            heap=sum(len(b.heap) for b in buckets),
            admissions=len(self._admission),
        )

    # -- updates -------------------------------------------------------------------------------

    def update(self, view: KeyView) -> None:
        """Insert or replace a key's view; eligibility is judged as of `view.at`."""
        old = self._views.get(view.key_id)
        # `served` moves with every settled request: compared first, it spares building two tuples of
        # every figure in the common case (a key that served since it was last indexed).
        if old is not None and old.served == view.served and _figures(old) == _figures(view):
            # Nothing the index files or ranks by changed (a republished snapshot, a timer that found
            # nothing due): keep its place. Eligibility only moves toward eligible as time passes with
            # the same figures, and the wake heap already holds when that happens.
            self._views[view.key_id] = view
            return
        moved = old is None or old.models != view.models
        if old is not None and moved:
            self._forget_membership(old)
        self._views[view.key_id] = view
        for model in view.models:
            self._declare(model)  # before the key is declared: a new bucket starts from placed keys only
        if moved:
            for model in view.models:
                self._declared.setdefault(model, {})[view.key_id] = None
            if not view.models:
                self._wild_ids[view.key_id] = None
        self._place(view, view.at)

    def remove(self, key_id: str) -> None:
        """Forget a key (revoked and drained, or deregistered). Unknown ids are ignored."""
        view = self._views.pop(key_id, None)
        if view is None:
            return
        self._forget_membership(view)
        self._excluded.pop(key_id, None)
        self._seq.pop(key_id, None)

    def _forget_membership(self, view: KeyView) -> None:
        key_id = view.key_id
        for bucket in self._buckets_of(view):
            self._drop_from(bucket, key_id)
            bucket.members.discard(key_id)
        if not view.models:
            self._wild_ids.pop(key_id, None)
        for model in view.models:
            declared = self._declared.get(model)
            if declared is not None:
                declared.pop(key_id, None)
                if not declared:  # nobody names the model any more: it is served by the wildcard
                    del self._declared[model]
                    self._buckets.pop(model, None)

    def _buckets_of(self, view: KeyView) -> list[_Bucket]:
        if view.models:
            return [self._buckets[m] for m in view.models if m in self._buckets]
        return [self._wild, *self._buckets.values()]

    def _drop_from(self, bucket: _Bucket, key_id: str) -> None:
        bucket.eligible.discard(key_id)
        for order in bucket.orders.values():
            order.discard(key_id)
        old = self._excluded.get(key_id)
        if old is not None:
            kind = bucket.benched.get(old.kind)
            if kind is not None:
                kind.pop(key_id, None)
                if not kind:
                    del bucket.benched[old.kind]

    def _place(self, view: KeyView, now: float) -> None:
        """(Re)file one key in every bucket it belongs to, as of `now`."""
        key_id = view.key_id
        excluded = eligibility(view, None, now, wall_offset=self.wall_offset)
        self._next_seq += 1
        seq = self._next_seq
        buckets = self._buckets_of(view)
        if excluded is None and key_id in self._excluded and self._excluded[key_id] is None:
            # Eligible before and still: only its ranks move (`put` re-files it, or leaves it in place).
            self._seq[key_id] = seq
            cfg = self._cfg
            for bucket in buckets:
                if key_id not in bucket.members:
                    break  # a bucket made since it was filed: file it everywhere, below
                for (model, weights), order in bucket.orders.items():
                    order.put(key_id, rank_key(view, model, weights, cfg))
            else:
                return
        for bucket in buckets:
            self._drop_from(bucket, key_id)  # uses the previous exclusion's kind
        self._excluded[key_id] = excluded
        self._seq[key_id] = seq
        for bucket in buckets:
            bucket.members.add(key_id)
            if excluded is None:
                bucket.eligible.add(key_id)
                for (model, weights), order in bucket.orders.items():
                    order.put(key_id, rank_key(view, model, weights, self._cfg))
            else:
                bucket.benched.setdefault(excluded.kind, {})[key_id] = excluded
                if excluded.until is not None:
                    heapq.heappush(bucket.heap, (excluded.until, seq, key_id))
                    if len(bucket.heap) > 64 + 4 * len(bucket.members):
                        self._compact(bucket)

    def _compact(self, bucket: _Bucket) -> None:
        bucket.heap = [e for e in bucket.heap if self._seq.get(e[2]) == e[1] and e[2] in bucket.members]
        heapq.heapify(bucket.heap)

    # -- buckets -------------------------------------------------------------------------------

    def _declare(self, model: str) -> _Bucket:
        """The bucket of a model a key declares, created from the keys already placed if new."""
        bucket = self._buckets.get(model)
        if bucket is not None:
            return bucket
        bucket = _Bucket(model)
        self._buckets[model] = bucket
        for key in [k for k in self._wild.orders if k[0] == model]:
            del self._wild.orders[key]  # the model is answered from its own bucket from now on
        for key_id in (*self._declared.get(model, ()), *self._wild_ids):
            excluded = self._excluded[key_id]
            bucket.members.add(key_id)
            if excluded is None:
                bucket.eligible.add(key_id)
            else:
                bucket.benched.setdefault(excluded.kind, {})[key_id] = excluded
                if excluded.until is not None:
                    bucket.heap.append((excluded.until, self._seq[key_id], key_id))
        heapq.heapify(bucket.heap)
        return bucket

    def _bucket(self, model: str) -> _Bucket:
        """Where a request for `model` is answered; never creates anything."""
        return self._buckets.get(model, self._wild)

    def _wake(self, bucket: _Bucket, now: float) -> None:
        # `bucket.heap` is re-read each pass: re-placing a key may push to it or compact it.
        while bucket.heap and bucket.heap[0][0] <= now:
            _, seq, key_id = heapq.heappop(bucket.heap)
            if self._seq.get(key_id) == seq and key_id in bucket.members:
                self._place(self._views[key_id], now)

    def _order(self, bucket: _Bucket, model: str, weights: Weights) -> _Order | None:
        """The sorted list for (model, weights), built if missing; None: the wildcard does not keep one yet."""
        key = (model, weights)
        order = bucket.orders.get(key)
        if order is not None:
            bucket.orders.move_to_end(key)
            return order
        if bucket is self._wild:
            if key not in self._admission:  # its first request lately: answer without keeping a list
                self._admission[key] = None
                if len(self._admission) > ADMISSION_WINDOW:
                    self._admission.popitem(last=False)
                return None
            del self._admission[key]
        order = _Order()
        for key_id in bucket.eligible:
            order.rank_of[key_id] = rank_key(self._views[key_id], model, weights, self._cfg)
        order.ranks = sorted(order.rank_of.values())
        bucket.orders[key] = order
        if bucket is self._wild:
            while len(bucket.orders) > self._max_wild_orders:
                bucket.orders.popitem(last=False)
        else:
            custom = [k for k in bucket.orders if k[1] not in _NAMED]
            while len(custom) > self._max_custom:
                del bucket.orders[custom.pop(0)]
        return order

    # -- queries -------------------------------------------------------------------------------

    def top(self, model: str, objective: str | Weights, now: float, k: int = 3) -> list[tuple[str, float]]:
        """The best `k` eligible keys for `model` at `now`: [(key id, score)], best first."""
        weights = weights_for(objective)
        bucket = self._bucket(model)
        self._wake(bucket, now)
        order = self._order(bucket, model, weights)
        if order is not None:
            ranks = order.ranks[:k]
        else:
            views, cfg = self._views, self._cfg
            ranks = heapq.nsmallest(k, (rank_key(views[key_id], model, weights, cfg) for key_id in bucket.eligible))
        return [(key_id, value) for _, _, key_id, value in ranks]

    def excluded_summary(self, model: str, now: float, limit: int = 5) -> ExclusionSummary:
        """Counts by kind and up to `limit` example reasons (one per kind first) — never a full list."""
        bucket = self._bucket(model)
        self._wake(bucket, now)
        if not bucket.benched:  # the common case: nothing excluded, nothing to sort or sample
            return ExclusionSummary(model, len(bucket.eligible), 0, (), (), len(self._views) - len(bucket.members))
        kinds = sorted(bucket.benched.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        # Round-robin over kinds so each kind shows an example before any shows two: O(limit).
        iters = [iter(members.values()) for _, members in kinds]
        examples: list[Excluded] = []
        while iters and len(examples) < limit:
            for it in list(iters):
                ex = next(it, None)
                if ex is None:
                    iters.remove(it)
                elif len(examples) < limit:
                    examples.append(ex)
        excluded = sum(len(m) for m in bucket.benched.values())
        return ExclusionSummary(
            model=model,
            eligible=len(bucket.eligible),
            excluded=excluded,
            by_kind=tuple((kind, len(m)) for kind, m in kinds),
            examples=tuple(examples),
            not_serving=len(self._views) - len(bucket.members),
        )

    def earliest_available(self, model: str, now: float) -> float | None:
        """`now` if a key is eligible; else the soonest a benched key recovers by itself; None if none will."""
        bucket = self._bucket(model)
        self._wake(bucket, now)
        if bucket.eligible:
            return now
        heap = bucket.heap
        while heap and not (self._seq.get(heap[0][2]) == heap[0][1] and heap[0][2] in bucket.members):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def exclusion(self, key_id: str, model: str, now: float) -> Excluded | None:
        """Why one key is not a candidate for `model` at `now` (None if it is)."""
        view = self._views.get(key_id)
        if view is None:
            return Excluded(key_id, "unknown", f"{key_id}: not registered", None)
        return eligibility(view, model, now, wall_offset=self.wall_offset)


_NAMED = frozenset(OBJECTIVES.values())
# Every field of a KeyView but `at`: what eligibility and every score read.
_figures = operator.attrgetter(*(a.name for a in attrs.fields(KeyView) if a.name != "at"))
