"""`KeyActor`: one per API key. Alone owns the key's lifecycle, quota windows, breaker, stats and spend.

Every handler is a plain `def` (an atomic transition): it calls the pure rules in `domain/`, stores the
new durable record (so a restart restores it), publishes a frozen `KeySnapshot` to the board, and emits
events. The quota windows, which change twice per request, are a `LiveQuota` private to the actor (the
same rules applied in place); the record and the snapshot are built from the actor's state when they
are read (the store writer takes the record once per flush, the router reads the snapshot once per
decision), not at every change: the actor hands the store a `Deferred` and the board a build function,
both returning frozen values of its state as of its latest change. The only background work is one
timer that wakes the actor when a bench or breaker cooldown ends, so that transition is published when
it happens rather than when somebody next looks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import assert_never

import attrs
import structlog
import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.domain import circuit, lifecycle, live_quota, quota, stats
from apikeyrouter.domain.circuit import Breaker, BreakerEvent, BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import KeyEffect
from apikeyrouter.domain.history import TransitionRow
from apikeyrouter.domain.keystate import KeyRecord, KeySettings, KeySnapshot
from apikeyrouter.domain.lifecycle import KeyState, Lifecycle, LifecycleEvent, Transition, TransitionRefused
from apikeyrouter.domain.live_quota import LiveQuota
from apikeyrouter.domain.quota import Quota, QuotaReservation
from apikeyrouter.domain.refusal import Refusal, RefusalKind
from apikeyrouter.domain.scoring import KeyView
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.domain.stats import Stats
from apikeyrouter.domain.view import bench_until, live_view, quality_of
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.kernel.timer import WakeTimer
from apikeyrouter.messages.key import (
    ApplyShared,
    Granted,
    InjectCrash,
    KeyCommand,
    Operate,
    Outcome,
    Release,
    Reserve,
    Settle,
    Wake,
)
from apikeyrouter.observe import EventBus, KeyBreakerChanged, KeyTransitioned, event_json, render_wall
from apikeyrouter.secret import Secret, redact
from apikeyrouter.store.port import Deferred, StorePort

__all__ = ["KeyActor", "KeyMaterial"]

log = structlog.get_logger("apikeyrouter.key")

_ZERO = Decimal(0)


@attrs.define
class KeyMaterial:
    """A key's current material. Its child spec keeps one across restarts of the actor (a rotation
    survives a crash); it is never stored: records name the material by fingerprint only."""

    secret: Secret


@attrs.define
class _Lease:
    quota: QuotaReservation
    probe: int | None
    cost: Decimal
    until: float
    request_id: str


class KeyActor(Actor[KeyCommand]):
    kind = "key"
    # Its own attributes in slots: past ~30 attributes an instance's dict stops sharing its keys with the
    # class's other instances (CPython), which cost ~1.5 KiB per key actor.
    __slots__ = (
        "_board",
        "_deferred",
        "_events",
        "_granted",
        "_leases",
        "_material",
        "_outbox",
        "_port",
        "_published_at",
        "_quality",
        "_quota",
        "_record",
        "_reserved_cost",
        "_retry_after",
        "_snapshot_build",
        "_timer",
        "_view_build",
        "_wall_offset",
        "config",
    )

    def __init__(
        self,
        config: KeySettings,
        secret: Secret | KeyMaterial,
        *,
        store: StorePort,
        board: SnapshotBoard,
        events: EventBus,
        wall_offset: float = 0.0,
        mailbox: int = 256,
    ) -> None:
        super().__init__(f"key:{config.id}", mailbox=mailbox)
        self.config = config
        self._material = secret if isinstance(secret, KeyMaterial) else KeyMaterial(secret)
        self._port = store
        self._outbox = store.outbox()
        self._board = board
        self._events = events
        self._wall_offset = wall_offset
        self._record: KeyRecord | None = None  # its `quota` is stale while `_quota` has changed since
        self._quota: LiveQuota | None = None
        self._deferred: Deferred | None = None  # made at the first change: the same one at every save
        self._published_at = 0.0
        self._quality = quality_of(config.metadata)
        # The board's builds, bound once (the board keeps the same callables) at the first change: a key
        # that never served publishes its first snapshot whole and holds none of this.
        self._snapshot_build: Callable[[], KeySnapshot] | None = None
        self._view_build: Callable[[Mapping[str, ModelPrice], bool], KeyView] | None = None
        self._leases: dict[int, _Lease] = {}
        self._granted = 0  # reservations granted by this instance
        self._reserved_cost = _ZERO
        self._timer = WakeTimer(Wake())
        self._retry_after: float | None = None

    @property
    def key_id(self) -> str:
        return self.config.id

    @property
    def secret(self) -> Secret:
        return self._material.secret

    # -- lifecycle of the actor -----------------------------------------------------------------------

    async def pre_start(self) -> None:
        now = trio.current_time()
        restored = await self._port.load("key", self.key_id)
        if isinstance(restored, KeyRecord):
            if restored.quota.config != self.config.quota:
                # Re-registered with new limits (a config reload): keep the counts, apply the limits.
                restored = attrs.evolve(restored, quota=attrs.evolve(restored.quota, config=self.config.quota))
            self._outbox.save("key", self.key_id, restored)
            self._record = restored
            if self.restarts:
                log.info("key_restored", key=self.key_id, lifecycle=restored.lifecycle.state.value)
        else:
            self._record = KeyRecord(
                lifecycle=Lifecycle(since=now),
                quota=quota.new_quota(self.config.quota, now),
                breaker=Breaker(),
                stats=Stats(),
                spend=_ZERO,
                fingerprint=self.secret.fingerprint,
            )
            self._outbox.save("key", self.key_id, self._record)
        self._published_at = now
        self._board.publish_key(self._snapshot())
        pending = self._outbox.drain()
        if pending is not None:
            await pending

    async def post_stop(self) -> None:
        # The wake-up timer is not work in flight: without this a stop would wait out a throttle.
        self._timer.cancel()
        # A stop can cut the loop short while it waits for room in the store: what it had not sent yet
        # goes now (the store stops after every key).
        pending = self._outbox.drain()
        if pending is not None:
            await pending

    def state_summary(self) -> KeySnapshot | None:
        return self._board.keys.get(self.key_id)

    @property
    def record(self) -> KeyRecord:
        """The durable record of the current state (a frozen value, built when the quota changed)."""
        rec = self._record
        assert rec is not None, "KeyActor used before it started"
        if self._quota is None:
            return rec  # the windows never changed: the record's are current
        q = self._quota.freeze()
        if rec.quota is not q:
            rec = self._record = KeyRecord(rec.lifecycle, q, rec.breaker, rec.stats, rec.spend, rec.fingerprint)
        return rec

    @property
    def _state(self) -> KeyRecord:
        """The record as the handlers read it: current but for its `quota` (read `_live` for that)."""
        assert self._record is not None, "KeyActor used before it started"
        return self._record

    @property
    def _live(self) -> LiveQuota:
        """The windows to change, made from the record's at the first change."""
        live = self._quota
        if live is None:
            live = self._quota = LiveQuota(self._state.quota)
        return live

    # -- messages -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Settle what is already queued before stopping (the settlements of requests that finished are
        in the mailbox, and their record is what the store keeps); asks for new work get `ActorStopped`."""
        self.stop_after_queue()

    def receive(self, msg: KeyCommand) -> Awaitable[None] | None:
        if self.draining and isinstance(msg, Reserve | Operate):
            msg.reply_to.fail(ActorStopped(self.name))
        else:
            self._handle(msg)
        return self._outbox.drain()  # None unless the store's mailbox was full: then wait for room

    def _handle(self, msg: KeyCommand) -> None:
        match msg:
            case Reserve():
                answer = self._reserve(msg)
                if isinstance(answer, Refusal):
                    # The router's view was stale (that is why it asked): publish the current one.
                    self._publish(trio.current_time())
                msg.reply_to.send(answer)
            case Settle(reservation_id=rid, outcome=outcome, reply_to=reply):
                self._settle(rid, outcome)
                if reply is not None:
                    reply.send(None)
            case Release(reservation_id=rid, reason=reason, reply_to=reply):
                self._release(rid, reason)
                if reply is not None:
                    reply.send(None)
            case Operate():
                msg.reply_to.send(self._operate(msg))
            case Wake():
                self._wake()
            case InjectCrash(reason=reason):
                raise RuntimeError(reason)
            case ApplyShared():
                self._apply_shared(msg)
            case _:
                assert_never(msg)

    def _reserve(self, req: Reserve) -> Granted | Refusal:
        now = trio.current_time()
        rec = self._state
        self._expire_leases(now)
        lc, lc_events = lifecycle.effective(rec.lifecycle, now)
        if lc_events:
            self._commit(now, lifecycle_=lc, lc_events=lc_events)
            rec = self._state
        refusal = self._refusal(req, lc, now)
        if refusal is not None:
            return refusal
        cfg = self.config
        breaker, admitted, b_events = circuit.try_acquire(rec.breaker, cfg.breaker, now)
        if not admitted:
            self._commit(now, breaker=breaker, b_events=b_events)
            is_open = breaker.state is BreakerState.OPEN
            retry = breaker.open_until if is_open else breaker.probe_deadline
            state = "open" if is_open else "half_open"
            return Refusal(self.key_id, RefusalKind.BREAKER, retry, detail={"state": state})
        reservation = self._live.take(req.tokens, now)  # `_refusal` saw it fit
        probe = breaker.probe_id if breaker.state is BreakerState.HALF_OPEN else None
        rid = self._next_reservation_id()
        self._leases[rid] = _Lease(reservation, probe, req.worst_case_cost, req.lease_until, req.request_id)
        self._reserved_cost += req.worst_case_cost
        self._commit(now, quota_=True, breaker=breaker, b_events=b_events)
        return Granted(self.key_id, rid, self.secret, probe, confirm_settle=cfg.max_in_flight is not None)

    def _refusal(self, req: Reserve, lc: Lifecycle, now: float) -> Refusal | None:
        """The first reason this key cannot take `req` now, short of the breaker (which may admit a probe)."""
        cfg = self.config
        if lc.state is not KeyState.ACTIVE:
            detail = {"state": lc.state.value, "reason": lc.reason}
            return Refusal(self.key_id, RefusalKind.LIFECYCLE, lc.available_at(now), detail=detail)
        if cfg.models and req.model not in cfg.models:
            return Refusal(self.key_id, RefusalKind.MODEL, detail={"model": req.model})
        if cfg.max_in_flight is not None and len(self._leases) >= cfg.max_in_flight:
            return Refusal(self.key_id, RefusalKind.IN_FLIGHT, busy=True, detail={"limit": cfg.max_in_flight})
        refused = self._live.refusal(req.tokens, now)
        return self._quota_refusal(refused) if refused is not None else None

    def _quota_refusal(self, refused: quota.QuotaRefusal) -> Refusal:
        detail = {"window": refused.window, "reason": refused.reason}
        return Refusal(self.key_id, RefusalKind.QUOTA, refused.retry_at, detail=detail)

    def _next_reservation_id(self) -> int:
        """Unique across every instance at this key's address: a call granted by a previous instance
        that settles now must not match (and free) a lease this one granted. The incarnation (kept by
        the supervision tree, so it also grows when an ancestor restarts the key's subtree) fills the
        low 32 bits, this instance's count the bits above: no count can run into the next incarnation."""
        self._granted += 1
        return (self._granted << 32) | self.incarnation

    def _settle(self, rid: int, outcome: Outcome) -> None:
        lease = self._leases.pop(rid, None)
        if lease is None:
            return  # released already, expired, or from before a restart: nothing is held
        now = trio.current_time()
        rec = self._state
        cfg = self.config
        self._reserved_cost -= lease.cost
        tokens = outcome.usage.total_tokens if outcome.usage is not None else 0
        live = self._live
        live.settle(lease.quota, tokens, now, outcome.signal)  # headers learned in the same pass
        failure = outcome.failure
        action = cfg.failures[failure] if failure is not None else None
        if failure is not None and outcome.provider_degraded and action is not None and action.counts_for_breaker:
            breaker, b_events = circuit.release(rec.breaker, cfg.breaker, now=now, probe=lease.probe)
        else:
            breaker, b_events = circuit.record(
                rec.breaker, cfg.breaker, failure, now=now, probe=lease.probe, table=cfg.failures
            )
        st = rec.stats
        if action is None or not action.caller_fault:
            st = stats.record(st, cfg.stats, success=failure is None, latency_s=outcome.latency_s, now=now)
        lc: Lifecycle = rec.lifecycle
        lc_events: list[LifecycleEvent] = []
        if failure is not None and action is not None and action.key_effect is not KeyEffect.NONE:
            until = self._bench_until(action.key_effect, outcome, live.freeze(), now)
            message = redact(outcome.message, self.secret)  # adapters scrub too; custom ones may not
            detail = message if len(message) <= 100 else message[:99] + "…"
            reason = f"{failure.value}" + (f": {detail}" if detail else "")
            self._retry_after = outcome.retry_after
            lc, lc_events = lifecycle.apply_effect(
                rec.lifecycle, action.key_effect, until=until, reason=reason, now=now
            )
        self._commit(
            now,
            quota_=True,
            breaker=breaker,
            b_events=b_events,
            stats_=st,
            lifecycle_=lc,
            lc_events=lc_events,
            spend=rec.spend + outcome.cost,
        )

    def _bench_until(self, effect: KeyEffect, outcome: Outcome, q: Quota, now: float) -> float:
        signal = outcome.signal or QuotaSignal()
        if outcome.retry_after is not None and signal.retry_after_s is None:
            signal = attrs.evolve(signal, retry_after_s=outcome.retry_after)
        cooldown = self.config.exhausted_cooldown_s if effect is KeyEffect.EXHAUST else self.config.default_throttle_s
        until = bench_until(effect, signal=signal, q=q, now=now, default_cooldown_s=cooldown)
        return until if until is not None else now + cooldown

    def _release(self, rid: int, reason: str) -> None:
        lease = self._leases.pop(rid, None)
        if lease is None:
            return
        now = trio.current_time()
        rec = self._state
        self._reserved_cost -= lease.cost
        self._live.release(lease.quota, now)
        breaker, b_events = circuit.release(rec.breaker, self.config.breaker, now=now, probe=lease.probe)
        self._commit(now, quota_=True, breaker=breaker, b_events=b_events)

    def _expire_leases(self, now: float) -> None:
        """A safety net: a reservation whose caller vanished without settling is released at its lease end."""
        expired = [rid for rid, lease in self._leases.items() if lease.until <= now]
        for rid in expired:
            log.warning("reservation_expired", key=self.key_id, request_id=self._leases[rid].request_id)
            self._release(rid, "lease expired")

    def _operate(self, msg: Operate) -> str | None:
        now = trio.current_time()
        rec = self._state
        lc = rec.lifecycle
        secret = self.secret
        match msg.action:
            case "disable":
                lc, events = lifecycle.disable(lc, reason=msg.reason, now=now)
            case "enable":
                lc, events = lifecycle.enable(lc, reason=msg.reason, now=now)
            case "revoke":
                lc, events = lifecycle.revoke(lc, reason=msg.reason, now=now)
            case "rotate":
                lc, events = lifecycle.rotate(lc, reason=msg.reason, now=now)
                if msg.secret is not None and lifecycle.refusal(events) is None:
                    secret = msg.secret
            case _:
                assert_never(msg.action)
        refused = lifecycle.refusal(events)
        if secret is not self.secret:
            self._material.secret = secret
        self._commit(now, lifecycle_=lc, lc_events=events, fingerprint=secret.fingerprint)
        return refused.why if refused is not None else None

    def _apply_shared(self, msg: ApplyShared) -> None:
        now = trio.current_time()
        lc = self._state.lifecycle
        match msg.state:
            case "throttled":
                lc, events = lifecycle.throttle(lc, until=msg.until or now, reason=msg.reason, now=now)
            case "invalid":
                lc, events = lifecycle.invalidate(lc, reason=msg.reason, now=now)
            case "revoked":
                lc, events = lifecycle.revoke(lc, reason=msg.reason, now=now)
            case "active":
                if lc.state not in (KeyState.INVALID, KeyState.REVOKED):
                    return  # only what was shared without an end is lifted this way
                lc, events = lifecycle.enable(lc, reason=msg.reason, now=now)
            case _:
                assert_never(msg.state)
        self._commit(now, lifecycle_=lc, lc_events=events)

    # -- committing state -----------------------------------------------------------------------------

    def _commit(
        self,
        now: float,
        *,
        lifecycle_: Lifecycle | None = None,
        lc_events: list[LifecycleEvent] | None = None,
        quota_: bool = False,
        breaker: Breaker | None = None,
        b_events: list[BreakerEvent] | None = None,
        stats_: Stats | None = None,
        spend: Decimal | None = None,
        fingerprint: str | None = None,
    ) -> None:
        rec = self._state
        rows = (
            tuple(
                TransitionRow(
                    self.key_id, ev.from_state.value, ev.to_state.value, ev.reason, ev.cause.value, ev.at, ev.until
                )
                for ev in lc_events
                if isinstance(ev, Transition)
            )
            if lc_events
            else ()
        )
        if fingerprint is not None and fingerprint == rec.fingerprint:
            fingerprint = None
        changed = (
            lifecycle_ is not None
            or quota_
            or breaker is not None
            or stats_ is not None
            or spend is not None
            or fingerprint is not None
        )
        if changed or rows:
            # Built directly (not `attrs.evolve`): this runs twice per request. Its quota is the one of
            # the last freeze (the record read through `record` brings it up to date).
            self._record = KeyRecord(
                rec.lifecycle if lifecycle_ is None else lifecycle_,
                rec.quota,
                rec.breaker if breaker is None else breaker,
                rec.stats if stats_ is None else stats_,
                rec.spend if spend is None else spend,
                rec.fingerprint if fingerprint is None else fingerprint,
            )
            deferred = self._deferred
            if deferred is None:
                deferred = self._deferred = Deferred(lambda: self.record)
            self._outbox.save("key", self.key_id, deferred, rows)
        for ev in lc_events or ():
            self._emit_lifecycle(ev)
        for bev in b_events or ():
            self._emit_breaker(bev)
        self._publish(now)
        self._arm_timer(now)

    def _emit_lifecycle(self, ev: LifecycleEvent) -> None:
        if isinstance(ev, Transition):
            event = KeyTransitioned(self.key_id, ev)
            self._events.publish(event)
            log.info("key_transition", **event_json(event, self._wall_offset))
        elif isinstance(ev, TransitionRefused):
            log.info("key_transition_refused", key=self.key_id, to=ev.to_state.value, why=ev.why)

    def _emit_breaker(self, ev: BreakerEvent) -> None:
        event = KeyBreakerChanged(self.key_id, ev)
        self._events.publish(event)
        log.info("key_breaker", **event_json(event, self._wall_offset))

    def _publish(self, now: float) -> None:
        """Tell the board the key changed; its snapshot is built when first read (`_snapshot`)."""
        self._published_at = now
        build, view = self._snapshot_build, self._view_build
        if build is None or view is None:
            build, view = self._snapshot_build, self._view_build = self._snapshot, self._view
        self._board.publish_key_lazy(self.key_id, self.config.provider, build, view)

    def _view(self, prices: Mapping[str, ModelPrice], degraded: bool) -> KeyView:
        """The router's scoring view of the state as of the last `_publish`: `snapshot_view` of
        `_snapshot()`, made from the working values (no frozen quota, no snapshot)."""
        rec = self._state
        cfg = self.config
        lc = rec.lifecycle
        now = self._published_at
        live = self._quota
        return live_view(
            self.key_id,
            cfg.provider,
            cfg.models,
            prices,
            lc,
            rec.breaker,
            cfg.breaker,
            live.figures(now) if live is not None else live_quota.figures(rec.quota, now),
            rec.stats,
            len(self._leases),
            cfg.max_in_flight,
            self._retry_after if lc.state is KeyState.THROTTLED else None,
            self._quality,
            degraded,
            now,
        )

    def _snapshot(self) -> KeySnapshot:
        """The snapshot of the state as of the last `_publish` (every change publishes)."""
        rec = self.record
        q = rec.quota
        now = self._published_at
        return (
            # Positional, in field order (a test checks every field).
            KeySnapshot(
                self.key_id,  # id
                self.config.provider,  # provider
                rec.fingerprint,  # fingerprint
                self.config.models,  # models
                self.config.metadata,  # metadata
                rec.lifecycle,  # lifecycle
                rec.breaker,  # breaker
                rec.stats,  # stats
                len(self._leases),  # in_flight
                self.config.max_in_flight,  # max_in_flight
                rec.spend,  # spend
                self._reserved_cost,  # reserved_cost
                self.config.budget,  # budget
                now,  # at
                q,  # quota
                self.config.breaker,  # breaker_config
                self._retry_after if rec.lifecycle.state is KeyState.THROTTLED else None,  # retry_after_s
                self.restarts,  # restarts
            )
        )

    def _arm_timer(self, now: float) -> None:
        """Wake up when a bench or a breaker cooldown ends, so the transition is published on time."""
        rec = self._state
        at: float | None = None
        for t in (rec.lifecycle.until, rec.breaker.open_until, rec.breaker.probe_deadline):
            if t and t > now and (at is None or t < at):
                at = t
        for lease in self._leases.values():  # runs on every commit: no lists built
            t = lease.until
            if t and t > now and (at is None or t < at):
                at = t
        self._timer.arm(at, ref=self.ref, nursery=self._nursery)

    def _wake(self) -> None:
        now = trio.current_time()
        self._expire_leases(now)  # a key at its in-flight limit gets no Reserve to expire them otherwise
        rec = self._state
        lc, lc_events = lifecycle.effective(rec.lifecycle, now)
        breaker, b_events = circuit.effective(rec.breaker, self.config.breaker, now)
        self._commit(now, lifecycle_=lc, lc_events=lc_events, breaker=breaker, b_events=b_events)

    def _wall(self, t: float | None) -> str:
        return "?" if t is None else render_wall(t, self._wall_offset)
