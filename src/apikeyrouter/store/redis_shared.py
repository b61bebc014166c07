"""`SharedLimits`: several instances share keys, limits and budgets on one Redis.

The routing decision never waits on Redis: each instance decides on its own key actors' snapshots. The
reservation does: after the local key granted, `reserve` makes one script call (redis_lua.RESERVE) that
checks and takes, atomically for every instance at once, the key's shared bench and lifecycle, its
in-flight slot, its 60 s request and token windows, its day (`rpd`) and month (`tokens_per_month`)
windows, every budget's hold and the 60 s request and token windows of the request's client and team
(`[[clients]]`/`[[teams]]` rpm/tpm: exact sliding logs on Redis's clock, redis_lua.py). `finish` gives it
back (settle or release), batched in one pipelined round trip per burst by a writer task, off the request
path.

Redis down (a refused connection, a failed call, or a heartbeat with no answer within `redis_deadline`):
the instance is degraded, not stopped. One reserve with no answer in time is not an outage: Redis may have
applied it (or still will), so that attempt is refused and given back, never also admitted on the local
share; four instances doing that under CPU load served 120 + 4 x 30 of a 120 rpm (issue 12).
- Hard budgets fail closed: the attempt is refused (UNAVAILABLE, naming the budget), so the request
  ends in `BudgetExceeded` with the reason; money is never spent that no instance can account for.
- Rate limits fall back to this instance's share: `limit // live instances` (the count last seen in
  Redis, heartbeats with a TTL), kept here in a quota window of the domain's own kind (domain/quota.py);
  a client's or team's rpm/tpm likewise, in windows of domain/rates.py (a share of 0 refuses).
  Bound: while the live count is right, the instances together admit at most the limit in any minute
  of the outage. A key's share starts with what this instance admitted for it in the last minute
  (through Redis or an earlier share; redis_local.py), so the minute in which Redis goes away stays
  within the limit too when instances admitted evenly; at worst (one instance took the whole shared
  window) the others' shares add up to (live - 1) / live of it. Clients' and teams' shares start empty.
- The heartbeat keeps probing; the first answer ends the outage and flushes the settlements that failed
  meanwhile (bounded, and counted if it overflows).
What the local shares admitted in the last minute is written into the keys' Redis windows when Redis is
back (`REPLAY`), so the requests already sent count against the rest of their minute on every instance
(and all they admitted, into the day and month windows of a key with `rpd` or `tokens_per_month`), and
what they admitted for clients and teams into those windows (`REPLAY_SCOPES`).

Instances: each heartbeats `akr:inst` with a TTL (`instance_ttl`); a heartbeat that finds a silent
instance reclaims what it held (in-flight slots and budget holds), so a killed instance holds nothing for
longer than the TTL (leases bound it too). A restarted instance with the same id first reclaims what its
previous life left behind, so nothing is counted twice.

Benches: an open breaker, a throttle or an exhaustion seen by one instance is written to
`akr:bench:<key>` with its remaining time, and an invalid or revoked key to `akr:life:<key>`; the
reserve script refuses such a key for every instance. What changed Redis is also published on
`akr:events`; every other instance applies it to its own key actor (`ApplyShared`: throttled until the
bench ends, invalid, revoked, or put back), so its routing skips the key without asking Redis. An echo
(an instance sharing back what it applied) changes nothing in Redis and is not published again.
"""

from __future__ import annotations

import collections
import json
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import structlog
import trio

from apikeyrouter.config import StoreConfig
from apikeyrouter.domain import period
from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.circuit import BreakerOpened
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.rates import RateLimit
from apikeyrouter.domain.refusal import Refusal, RefusalKind
from apikeyrouter.messages.key import ApplyShared
from apikeyrouter.observe import EventBus, KeyBreakerChanged, KeyTransitioned
from apikeyrouter.store.redis_link import RedisLink, StoreUnavailable
from apikeyrouter.store.redis_local import KeyLimits, LocalShares, SharedAsk, SharedGrant

__all__ = ["KeyLimits", "SharedAsk", "SharedGrant", "SharedLimits", "default_instance_id", "open_shared"]

log = structlog.get_logger("apikeyrouter.store")

_NANO = Decimal("1e9")
_SOFT_LIMIT = str(2**53)  # nano-dollars no spend reaches: Lua numbers are doubles, exact up to 2**53
_RETRY_MAX = 10_000  # settlements kept while Redis is down
_BATCH = 128
_CHANNEL = "akr:events"


@asynccontextmanager
async def open_shared(
    store: StoreConfig,
    events: EventBus,
    budget_specs: Callable[[], Iterable[BudgetSpec]],
    apply: Callable[[str, ApplyShared], Awaitable[None]] | None = None,
    budget_templates: Callable[[], Iterable[BudgetSpec]] = tuple,
    rate_limits: Callable[[], Iterable[RateLimit]] = tuple,
) -> AsyncIterator[SharedLimits | None]:
    """Run `SharedLimits` for a redis store while the block runs (None for any other store)."""
    if store.kind != "redis" or store.url is None:
        yield None
        return
    link = RedisLink(store.url, deadline=store.redis_deadline)
    shared = SharedLimits(
        link,
        store.instance_id or default_instance_id(),
        instance_ttl=store.instance_ttl,
        events=events,
        budget_specs=budget_specs,
        budget_templates=budget_templates,
        rate_limits=rate_limits,
    )
    shared.apply = apply
    async with trio.open_nursery() as nursery:
        await nursery.start(shared.run)
        try:
            yield shared
        finally:
            with trio.move_on_after(2 * store.redis_deadline + 1) as cs:
                cs.shield = True  # a clean stop hands back what it holds, so no one waits for its TTL
                await shared.leave()
            nursery.cancel_scope.cancel(reason="the router has stopped")


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _nano(amount: Decimal) -> int:
    return math.ceil(amount * _NANO)  # holds and charges round up: never under-count money


class SharedLimits:
    def __init__(
        self,
        link: RedisLink,
        instance_id: str,
        *,
        instance_ttl: float,
        events: EventBus,
        budget_specs: Callable[[], Iterable[BudgetSpec]] = tuple,
        budget_templates: Callable[[], Iterable[BudgetSpec]] = tuple,
        rate_limits: Callable[[], Iterable[RateLimit]] = tuple,
    ) -> None:
        self.link = link
        self.instance_id = instance_id
        self.instance_ttl = instance_ttl
        self.live = 1
        self.reclaimed = 0
        self.dropped = 0
        self.applied = 0  # benches applied from other instances
        # How a bench another instance published reaches this instance's key actor (set by the runtime).
        self.apply: Callable[[str, ApplyShared], Awaitable[None]] | None = None
        self._budget_specs = budget_specs
        self._budget_templates = budget_templates  # "client:" -> the budget of every client without its own
        self._budget_index: dict[str, BudgetSpec] = {}
        self._budget_list: Iterable[BudgetSpec] | None = None
        self._budget_len = -1
        self._rate_limits = rate_limits
        self._rate_list: Iterable[RateLimit] | None = None
        self._rate_index: dict[str, RateLimit] = {}
        self._events = events
        self._local = LocalShares()
        self._ids = 0
        self._send, self._recv = trio.open_memory_channel[list[str]](1024)
        self._retry: collections.deque[list[str]] = collections.deque()
        self._stops: list[Callable[[], None]] = []

    # -- lifetime --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SharedLimits] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat (reclaiming this id's previous life first), the settlement writer and the bench
        sharer, until cancelled. Starts degraded when Redis is not there yet."""
        await self._beat(fresh=True)
        share_send, share_recv = trio.open_memory_channel[tuple[str, str, str, int]](256)
        self._stops = [
            self._events.observe(KeyBreakerChanged, lambda ev: self._on_breaker(ev, share_send)),
            self._events.observe(KeyTransitioned, lambda ev: self._on_transition(ev, share_send)),
        ]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._sharer, share_recv)
                nursery.start_soon(self._listener)
                task_status.started(self)
        finally:
            for stop in self._stops:
                stop()
            self.link.close()

    async def leave(self) -> None:
        """Flush queued settlements, hand back anything still held and leave the live set."""
        batch: list[list[str]] = [*self._retry]
        self._retry.clear()
        while True:
            try:
                batch.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        try:
            if batch:
                await self.link.settle_many(batch)
            await self.link.heartbeat(self.instance_id, 1, fresh=True)
        except StoreUnavailable as exc:
            log.warning("redis_leave_incomplete", reason=exc.reason, settlements=len(batch))

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "up": self.link.up,
            "instance_id": self.instance_id,
            "live_instances": self.live,
            "mode": "shared" if self.link.up else f"local share (1/{max(1, self.live)} of each limit)",
            "last_error": self.link.last_error,
            "pending_settlements": len(self._retry),
            "pending_replay": self._local.pending(),
        }

    async def shared_budgets(self, local: dict[str, Any]) -> dict[str, Any]:
        """`local` (this instance's budget view, as `budgets()` gives it) with the fleet's spend from Redis,
        in one round trip, off the request path: `spent`, `reserved` and `remaining` become every instance's
        together (`scope: "shared"`), this instance's own stay under `local`. Redis away: the local view
        as it is, `scope: "local"` and the reason."""
        specs = self.budgets_for(local)
        try:
            totals = await self.link.budgets([(spec.id, self._period_arg(spec)) for spec in specs])
        except StoreUnavailable as exc:
            return {bid: {**view, "scope": "local", "shared_error": exc.reason} for bid, view in local.items()}
        merged = {bid: {**view, "scope": "local"} for bid, view in local.items()}
        for spec, (spent_n, held_n) in zip(specs, totals, strict=True):
            view = local[spec.id]
            spent, held = Decimal(spent_n) / _NANO, Decimal(held_n) / _NANO
            merged[spec.id] = {
                **view,
                "spent": _money(spent),
                "reserved": _money(held),
                "remaining": _money(max(Decimal(0), spec.limit - spent - held)),
                "scope": "shared",
                "local": {key: view[key] for key in ("spent", "reserved", "remaining") if key in view},
            }
        return merged

    # -- the request path ------------------------------------------------------------------------------

    def budgets_for(self, ids: Iterable[str]) -> tuple[BudgetSpec, ...]:
        """The configured budgets among `ids`. Indexed once per change of the budget list (a reload
        replaces it, a key registered with a budget appends to it), not per request: with a budget per
        key there may be thousands."""
        specs = self._budget_specs()
        if not (isinstance(specs, list) and specs is self._budget_list and len(specs) == self._budget_len):
            self._budget_index = {s.id: s for s in specs}
            # The list itself is kept (not its id): a list freed by a reload can never pass for the new one.
            self._budget_list, self._budget_len = specs, len(specs) if isinstance(specs, list) else -1
        index = self._budget_index
        found = [index[i] if i in index else self._from_template(i) for i in ids]
        return tuple(spec for spec in found if spec is not None)

    def rates_for(self, scopes: Iterable[str]) -> tuple[RateLimit, ...]:
        """The rpm/tpm limits of `scopes` ("client:acme", "team:search") that have any (indexed once per
        change of the list: a reload replaces it)."""
        limits = self._rate_limits()
        if limits is not self._rate_list:
            self._rate_index = {lim.scope: lim for lim in limits}
            self._rate_list = limits
        index = self._rate_index
        return tuple(index[s] for s in scopes if s in index)

    def _from_template(self, budget_id: str) -> BudgetSpec | None:
        """A budget made from a template (a client's from `client_default`), as the local ledger makes it."""
        for template in self._budget_templates():
            if budget_id.startswith(template.id) and len(budget_id) > len(template.id):
                return attrs.evolve(template, id=budget_id)
        return None

    async def reserve(self, ask: SharedAsk) -> SharedGrant | Refusal:
        """One round trip: the grant, or why the shared side refuses. Never raises for Redis trouble."""
        self._ids += 1
        rid = f"{self.instance_id}/{ask.request_id}/{self._ids}"
        if not self.link.up:
            return self._fallback(ask, rid, self.link.last_error or "not connected")
        lim = ask.limits
        args = [self.instance_id, rid, ask.key_id, str(ask.tokens), _opt(lim.rpm), _opt(lim.tpm)]
        args += [_opt(lim.max_in_flight), str(max(1, int(ask.lease_s * 1000))), str(_nano(ask.worst_case))]
        args.append(str(len(ask.budgets)))
        for spec in ask.budgets:
            args += [spec.id, self._limit_arg(spec), self._period_arg(spec)]
        args += [_opt(lim.rpd), _opt(lim.tokens_per_month), str(len(ask.scopes))]
        for rl in ask.scopes:
            args += [rl.scope, _opt(rl.rpm), _opt(rl.tpm)]
        try:
            reply = await self.link.reserve(args)
        except BaseException as exc:
            if isinstance(exc, StoreUnavailable) and not exc.maybe_applied:
                return self._fallback(ask, rid, exc.reason)  # never reached Redis (no connection)
            # It may have run on the server (a timeout, or cancelled mid-call): give it back, idempotently.
            taken = SharedGrant(ask.key_id, rid, ask.tokens, ask.budgets, scopes=tuple(rl.scope for rl in ask.scopes))
            self._queue(self._settle_args(taken, None, None))
            if not isinstance(exc, StoreUnavailable):
                raise
            # Not on the local share either: Redis may have counted it (and other instances go on with the
            # shared window), so admitting it here too is how 4 instances served 120 + 4 x 30 of a 120 rpm.
            return self._unanswered(ask, exc.reason)
        answer = _answer(ask, rid, reply)
        if isinstance(answer, SharedGrant):
            self._local.note(ask.key_id, ask.tokens, lim)
        return answer

    async def finish(self, grant: SharedGrant, *, tokens: int | None, charge: Decimal | None) -> None:
        """Settle (`tokens` the actual count) or release (`tokens` None: the provider never saw it).
        Queued for the writer: waits only when its queue is full (backpressure, never a silent drop)."""
        if grant.local is not None:
            self._local.finish(grant, tokens, charged=charge is not None)
            return
        await self._send.send(self._settle_args(grant, tokens, charge))

    def _settle_args(self, grant: SharedGrant, tokens: int | None, charge: Decimal | None) -> list[str]:
        args = [self.instance_id, grant.rid, grant.key_id, str(grant.tokens)]
        args += [str(-1 if tokens is None else tokens), str(-1 if charge is None else _nano(charge))]
        args.append(str(len(grant.budgets)))
        for spec in grant.budgets:
            args += [spec.id, self._period_arg(spec)]
        args += [str(grant.at_ms), str(len(grant.scopes)), *grant.scopes]
        return args

    def _period_arg(self, spec: BudgetSpec) -> str:
        """The budget's period for the scripts: `period_s` (> 0, cut on Redis's clock), or minus the start of
        the current calendar period (cut here, in the configured timezone, as the local ledger cuts it)."""
        if spec.calendar is not None:
            start, _end = period.bounds(spec.calendar, trio.current_time() + self._events.wall_offset)
            return f"{-max(1, math.floor(start))}"
        return f"{spec.period_s or 0:g}"

    @staticmethod
    def _limit_arg(spec: BudgetSpec) -> str:
        """A soft budget is counted on the shared side but never refuses (the local ledger reports it)."""
        return _SOFT_LIMIT if spec.mode == "soft" else str(math.floor(spec.limit * _NANO))

    def _unanswered(self, ask: SharedAsk, reason: str) -> Refusal:
        """A reserve Redis may have applied: this attempt is refused (hard budgets with their reason)."""
        error = f"redis did not answer ({reason}): not admitted on the local share, Redis may have counted it"
        return _fail_closed(ask, reason) or Refusal(ask.key_id, RefusalKind.UNAVAILABLE, detail={"error": error})

    def _fallback(self, ask: SharedAsk, rid: str, reason: str) -> SharedGrant | Refusal:
        return _fail_closed(ask, reason) or self._local.grant(ask, rid, max(1, self.live))

    # -- background ------------------------------------------------------------------------------------

    def _queue(self, args: list[str]) -> None:
        try:
            self._send.send_nowait(args)
        except trio.WouldBlock:
            self._keep([args])

    def _keep(self, batch: list[list[str]]) -> None:
        """Settlements that could not be sent now: kept for when Redis is back (bounded, counted)."""
        for args in batch:
            if len(self._retry) >= _RETRY_MAX:
                self.dropped += 1
                log.error("redis_settlement_dropped", key=args[2], reason="retry queue full; its lease frees it")
                continue
            self._retry.append(args)

    async def _writer(self) -> None:
        async for first in self._recv:
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            if not self.link.up:
                self._keep(batch)
                continue
            try:
                await self.link.settle_many(batch)
            except StoreUnavailable:
                self._keep(batch)

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.instance_ttl / 4)
            await self._beat(fresh=False)

    async def _beat(self, *, fresh: bool) -> None:
        try:
            live, reclaimed = await self.link.heartbeat(self.instance_id, int(self.instance_ttl * 1000), fresh=fresh)
        except StoreUnavailable:
            return
        self.live = max(1, live)
        await self._replay()
        if reclaimed:
            self.reclaimed += reclaimed
            log.info("redis_reclaimed", reservations=reclaimed, own=fresh)
        while self._retry and self.link.up:
            batch = [self._retry.popleft() for _ in range(min(_BATCH, len(self._retry)))]
            try:
                await self.link.settle_many(batch)
            except StoreUnavailable:
                self._retry.extendleft(reversed(batch))

    async def _replay(self) -> None:
        """Write what the local shares admitted during an outage into the Redis windows (once each)."""
        now = trio.current_time()
        for key_id, share in self._local.keys.items():
            cfg = share.quota.config
            counts = (cfg.rpd is not None, cfg.tokens_per_month is not None)
            horizon = math.inf if any(counts) else 60.0  # a day or month window counts the whole outage
            entries = [(int((now - at) * 1000), tokens) for at, tokens in share.admitted if now - at < horizon]
            if not entries:
                share.admitted.clear()
                continue
            try:
                await self.link.replay(self.instance_id, key_id, entries, counts)
            except StoreUnavailable:
                return  # the next heartbeat tries again
            share.admitted.clear()
            log.info("redis_replayed", key=key_id, requests=len(entries))
        await self._replay_scopes(now)

    async def _replay_scopes(self, now: float) -> None:
        admitted = self._local.scope_admitted
        scoped = [(scope, int((now - at) * 1000), n) for at, scope, n in admitted if now - at < 60]
        if scoped:
            try:
                await self.link.replay_scopes(self.instance_id, scoped)
            except StoreUnavailable:
                return
            log.info("redis_replayed_scopes", entries=len(scoped))
        admitted.clear()

    async def _sharer(self, recv: trio.MemoryReceiveChannel[tuple[str, str, str, int]]) -> None:
        async for key_id, what, value, ttl_ms in recv:
            message = {"from": self.instance_id, "key": key_id, "what": what, "value": value, "ttl_ms": ttl_ms}
            try:
                if await self.link.share(key_id, what, value, ttl_ms):
                    await self.link.publish(_CHANNEL, json.dumps(message))
            except StoreUnavailable:
                log.warning("redis_bench_not_shared", key=key_id, what=what)

    async def _listener(self) -> None:
        """Apply the benches other instances publish to this instance's key actors, so that its routing
        decisions (which never wait on Redis) skip them too. The reservation refuses them regardless."""
        next_message = self.link.subscriber(_CHANNEL)
        while True:
            try:
                found = await trio.to_thread.run_sync(next_message, 0.5, abandon_on_cancel=True)
            except StoreUnavailable:
                await trio.sleep(self.instance_ttl / 4)  # down: the heartbeat says so; try again later
                continue
            if found is None or self.apply is None:
                continue
            change = _remote_change(found.get("data"), self.instance_id)
            if change is not None:
                self.applied += 1
                await self.apply(*change)

    def _offer(self, send: trio.MemorySendChannel[tuple[str, str, str, int]], item: tuple[str, str, str, int]) -> None:
        try:
            send.send_nowait(item)
        except trio.WouldBlock:  # an observer cannot wait; a lost bench only delays the others' refusal
            self.dropped += 1
            log.warning("redis_bench_not_shared", key=item[0], what=item[1], reason="queue full")

    def _on_breaker(self, ev: KeyBreakerChanged, send: trio.MemorySendChannel[tuple[str, str, str, int]]) -> None:
        change = ev.change
        if isinstance(change, BreakerOpened):
            ttl = int((change.until - trio.current_time()) * 1000)
            if ttl > 0:
                self._offer(send, (ev.key, "bench", f"breaker open: {change.reason}", ttl))

    def _on_transition(self, ev: KeyTransitioned, send: trio.MemorySendChannel[tuple[str, str, str, int]]) -> None:
        tr = ev.transition
        if tr.to_state in (KeyState.INVALID, KeyState.REVOKED):
            self._offer(send, (ev.key, "life", tr.to_state.value, 0))
        elif tr.to_state in (KeyState.THROTTLED, KeyState.EXHAUSTED) and tr.until is not None:
            ttl = int((tr.until - trio.current_time()) * 1000)
            if ttl > 0:
                self._offer(send, (ev.key, "bench", f"{tr.to_state.value}: {tr.reason}", ttl))
        elif tr.to_state is KeyState.ACTIVE and tr.from_state in (KeyState.INVALID, KeyState.REVOKED):
            self._offer(send, (ev.key, "clear", "", 0))


def _remote_change(data: object, own: str) -> tuple[str, ApplyShared] | None:
    """A published bench as the key command that applies it here; None for this instance's own or junk."""
    try:
        msg = json.loads(data if isinstance(data, str | bytes) else "null")
        sender, key_id, what, value, ttl_ms = msg["from"], msg["key"], msg["what"], msg["value"], int(msg["ttl_ms"])
    except (ValueError, TypeError, KeyError):
        log.warning("redis_event_ignored", reason="not a bench message")
        return None
    if sender == own or not isinstance(key_id, str):
        return None
    match what:
        case "bench":
            until = trio.current_time() + ttl_ms / 1000
            return key_id, ApplyShared("throttled", f"benched by instance {sender} ({value})", until)
        case "life" if value in ("invalid", "revoked"):
            return key_id, ApplyShared(value, f"{value} on instance {sender}")
        case "clear":
            return key_id, ApplyShared("active", f"put back on instance {sender}")
        case _:
            return None


def _fail_closed(ask: SharedAsk, reason: str) -> Refusal | None:
    """The refusal of an attempt with a hard budget while Redis cannot account for it (None: it has none)."""
    hard = [spec.id for spec in ask.budgets if spec.mode == "hard"]
    if not hard:
        return None
    error = f"redis unavailable ({reason}): hard budgets fail closed ({', '.join(hard)})"
    return Refusal(ask.key_id, RefusalKind.UNAVAILABLE, budget=hard[0], detail={"error": error})


def _money(amount: Decimal) -> str:
    return format(amount.normalize(), "f")  # "0.000123", never "1.23E-4"


def _opt(limit: int | None) -> str:
    return "-1" if limit is None else str(limit)


def _answer(ask: SharedAsk, rid: str, reply: list[Any]) -> SharedGrant | Refusal:
    kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if kind == "ok":
        scopes = tuple(rl.scope for rl in ask.scopes)
        return SharedGrant(ask.key_id, rid, ask.tokens, ask.budgets, at_ms=int(reply[1]), scopes=scopes)
    retry_ms = int(reply[1])
    retry_at = trio.current_time() + retry_ms / 1000 if retry_ms >= 0 else None
    rest = [r.decode() if isinstance(r, bytes) else str(r) for r in reply[2:]]
    key = ask.key_id
    match kind:
        case "lifecycle":
            why = "set by another instance"
            return Refusal(key, RefusalKind.LIFECYCLE, detail={"state": rest[0], "reason": why})
        case "bench":
            return Refusal(key, RefusalKind.LIFECYCLE, retry_at, detail={"state": "benched", "reason": rest[0]})
        case "in_flight":
            return Refusal(key, RefusalKind.IN_FLIGHT, busy=True, detail={"limit": int(rest[0]), "scope": "shared"})
        case "rpm" | "tpm" | "rpd" | "tokens/month":
            reason = f"shared limit {rest[0]} reached across instances"
            if retry_ms == -2:
                reason = f"bigger than the shared limit {rest[0]}"
            return Refusal(key, RefusalKind.QUOTA, retry_at, detail={"window": kind, "reason": reason})
        case "scope":  # the client's or team's own window: 429 client_rate_limited, no other key helps
            scope, window, most, used = rest[:4]
            reason = f"{window} limit {most} reached across instances ({used} used)"
            if retry_ms == -2:
                reason = f"bigger than the shared {window} limit {most}"
            said = {"window": f"{scope} {window}", "reason": reason, "scope": scope}
            return Refusal(key, RefusalKind.QUOTA, retry_at, detail=said)
        case "budget":
            limit, spent, held = (Decimal(int(v)) / _NANO for v in rest[1:4])
            detail = {
                "requested": ask.worst_case,
                "available": limit - spent - held,
                "limit": limit,
                "spent": spent,
                "reserved": held,
            }
            return Refusal(key, RefusalKind.BUDGET, budget=rest[0], detail=detail)
        case _:
            raise ValueError(f"unexpected reply from the reserve script: {kind!r}")
