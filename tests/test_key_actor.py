"""KeyActor on its own (no HTTP): reservations, outcomes, timers and restarts, with exact virtual times."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import trio
import trio.testing

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.key import KeyActor
from apikeyrouter.domain.circuit import BreakerConfig
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.keystate import KeySettings
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import QuotaConfig
from apikeyrouter.domain.refusal import Refusal, RefusalKind, explain
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.domain.view import quality_of, snapshot_view
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.kernel.spec import ChildSpec
from apikeyrouter.messages.key import Granted, InjectCrash, KeyCommand, Operate, Outcome, Release, Reserve, Settle
from apikeyrouter.observe import EventBus, KeyTransitioned
from apikeyrouter.secret import Secret
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.port import StorePort
from apikeyrouter.store.writer import run_store
from apikeyrouter.supervisors import Supervisor

D = Decimal


class Harness:
    def __init__(self, config: KeySettings) -> None:
        self.board = SnapshotBoard()
        self.events = EventBus()
        self.store = MemoryStore()
        self.port = StorePort()
        self.config = config

    @asynccontextmanager
    async def running_store(self) -> AsyncIterator[None]:
        async with run_store(self.store) as port:
            assert port.ref is not None
            self.port.bind(port.ref, port.pending)  # actors made before the store started hold this port
            yield

    def make(self) -> KeyActor:
        return KeyActor(
            self.config, Secret("sk-test-key-material"), store=self.port, board=self.board, events=self.events
        )


async def reserve(
    ref: ActorRef[KeyCommand], tokens: int = 10, cost: str = "0", lease: float = 1e9
) -> Granted | Refusal:
    answer: Granted | Refusal = await ref.ask(lambda r: Reserve("req", "m", tokens, D(cost), lease, r))
    return answer


async def test_throttle_ends_on_time_without_any_request(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(KeySettings(id="k", provider="p"))
    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(h.make().run)
        grant = await reserve(ref)
        assert isinstance(grant, Granted)
        await ref.tell(Settle(grant.reservation_id, Outcome(FailureClass.RATE_LIMITED, retry_after=30)))
        await trio.sleep(31)
        seen = h.events.recent(kinds=["key.transition"])
        assert all(isinstance(e, KeyTransitioned) and e.key == "k" for e in seen)
        assert [
            (e.transition.from_state, e.transition.to_state, e.at) for e in seen if isinstance(e, KeyTransitioned)
        ] == [
            (KeyState.ACTIVE, KeyState.THROTTLED, 0),
            (KeyState.THROTTLED, KeyState.ACTIVE, 30),
        ]
        assert h.board.keys["k"].lifecycle.state is KeyState.ACTIVE
        nursery.cancel_scope.cancel()


async def test_refusals_carry_reasons_and_release_returns_everything(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(KeySettings(id="k", provider="p", quota=QuotaConfig(rpm=2), max_in_flight=1))
    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(h.make().run)
        first = await reserve(ref, cost="0.60")
        assert isinstance(first, Granted)
        busy = await reserve(ref)
        assert isinstance(busy, Refusal) and (busy.kind, busy.busy) == (RefusalKind.IN_FLIGHT, True)
        assert explain(busy) == "in-flight limit 1 reached"
        await ref.tell(Release(first.reservation_id))
        again = await reserve(ref, cost="0.60")
        assert isinstance(again, Granted)
        await ref.tell(Settle(again.reservation_id, Outcome(None, cost=D("0.25"))))
        third = await reserve(ref)  # rpm=2: one released (not counted), one settled (counted)
        assert isinstance(third, Granted)
        await ref.tell(Settle(third.reservation_id, Outcome(None)))
        limited = await reserve(ref)
        assert isinstance(limited, Refusal) and limited.kind is RefusalKind.QUOTA and limited.detail["window"] == "rpm"
        assert limited.retry_at is not None and limited.retry_at > 0
        snap = h.board.keys["k"]
        assert (snap.in_flight, snap.spend, snap.reserved_cost) == (0, D("0.25"), D(0))
        nursery.cancel_scope.cancel()


async def test_lease_expiry_reclaims_a_reservation_nobody_settled(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(KeySettings(id="k", provider="p", max_in_flight=1))
    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(h.make().run)
        assert isinstance(await reserve(ref, lease=5), Granted)
        assert isinstance(await reserve(ref), Refusal)
        await trio.sleep(6)
        assert isinstance(await reserve(ref), Granted)
        nursery.cancel_scope.cancel()


async def test_breaker_counts_only_server_side_failures(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(KeySettings(id="k", provider="p", breaker=BreakerConfig(failure_threshold=2, cooldown=10)))
    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(h.make().run)
        for failure in (FailureClass.BAD_REQUEST, FailureClass.CONTEXT_LENGTH, FailureClass.SERVER_ERROR):
            grant = await reserve(ref)
            assert isinstance(grant, Granted)
            await ref.tell(Settle(grant.reservation_id, Outcome(failure)))
        assert h.board.keys["k"].breaker.state.value == "closed"
        grant = await reserve(ref)
        assert isinstance(grant, Granted)
        await ref.tell(Settle(grant.reservation_id, Outcome(FailureClass.TIMEOUT)))
        refused = await reserve(ref)
        assert isinstance(refused, Refusal) and refused.kind is RefusalKind.BREAKER and refused.retry_at == 10
        assert refused.detail["state"] == "open" and explain(refused).startswith("breaker open until")
        nursery.cancel_scope.cancel()


async def test_crash_restores_the_throttled_state(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(KeySettings(id="k", provider="p"))
    sup = Supervisor("keys", children=[ChildSpec("key:k", h.make)])
    async with h.running_store(), trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        actor = sup.child("key:k")
        assert isinstance(actor, KeyActor)
        ref = actor.ref
        grant = await reserve(ref)
        assert isinstance(grant, Granted)
        await ref.tell(Settle(grant.reservation_id, Outcome(FailureClass.RATE_LIMITED, retry_after=60)))
        await ref.tell(InjectCrash())
        await trio.testing.wait_all_tasks_blocked()
        restarted = sup.child("key:k")
        assert restarted is not actor and isinstance(restarted, KeyActor) and restarted.restarts == 1
        refused = await reserve(ref)  # the same ref reaches the new instance, still throttled
        assert isinstance(refused, Refusal) and refused.kind is RefusalKind.LIFECYCLE
        assert refused.detail["state"] == "throttled" and refused.retry_at == 60
        assert explain(refused).startswith("throttled until")
        nursery.cancel_scope.cancel()


async def test_secret_never_in_snapshot_or_reprs() -> None:
    h = Harness(KeySettings(id="k", provider="p"))
    actor = h.make()
    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(actor.run)
        grant = await reserve(ref)  # the grant carries the material to the caller, behind a redacting repr
        assert isinstance(grant, Granted) and grant.secret.reveal() == "sk-test-key-material"
        seen = repr(actor.config) + repr(ref.snapshot()) + repr(h.board.keys) + repr(grant)
        assert "sk-test-key-material" not in seen
        nursery.cancel_scope.cancel()


async def test_the_published_snapshot_carries_each_figure_in_its_own_field(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The key builds its snapshot positionally (for speed): every field is checked against what it holds."""
    config = KeySettings(
        id="k7",
        provider="prov",
        models=frozenset({"m"}),
        metadata={"quality": "high"},
        breaker=BreakerConfig(failure_threshold=9, cooldown=11.0),
        max_in_flight=5,
        budget=D("42"),
    )
    h = Harness(config)
    async with h.running_store(), trio.open_nursery() as nursery:
        actor = h.make()
        ref = await nursery.start(actor.run)
        await trio.sleep(2.5)
        first = await reserve(ref, cost="0.75")
        assert isinstance(first, Granted)
        await ref.tell(Settle(first.reservation_id, Outcome(None, cost=D("0.5"), latency_s=0.1)))
        await trio.sleep(1)
        held = await reserve(ref, cost="0.25")
        assert isinstance(held, Granted)
        snap = h.board.keys["k7"]
        rec = actor.record
        assert (snap.id, snap.provider, snap.fingerprint) == ("k7", "prov", Secret("sk-test-key-material").fingerprint)
        assert (snap.models, snap.metadata) == (frozenset({"m"}), {"quality": "high"})
        assert (snap.lifecycle, snap.breaker, snap.stats, snap.quota) == (
            rec.lifecycle,
            rec.breaker,
            rec.stats,
            rec.quota,
        )
        assert snap.stats.requests == 1
        assert (snap.in_flight, snap.max_in_flight) == (1, 5)
        assert (snap.spend, snap.reserved_cost, snap.budget) == (D("0.5"), D("0.25"), D("42"))
        assert (snap.at, snap.breaker_config, snap.retry_after_s, snap.restarts) == (3.5, config.breaker, None, 0)
        nursery.cancel_scope.cancel()


async def test_the_routers_view_of_a_key_is_the_view_of_its_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    """The key publishes lazily: the board's view build (from the actor's working values) gives what
    `snapshot_view` of the snapshot gives, after every kind of change, degraded or not; a snapshot read
    earlier is a frozen value that later changes do not touch."""
    config = KeySettings(
        id="k", provider="p", metadata={"quality": "premium"}, quota=QuotaConfig(rpm=3, tpm=500), max_in_flight=2
    )
    h = Harness(config)
    prices = {"m": ModelPrice(D("1"), D("2"))}

    def check() -> None:
        snap = h.board.keys["k"]
        for degraded in (False, True):
            expected = snapshot_view(snap, prices, quality=quality_of(snap.metadata), degraded=degraded)
            assert h.board.keys.view("k", prices, degraded) == expected

    async with h.running_store(), trio.open_nursery() as nursery:
        ref = await nursery.start(h.make().run)
        check()
        for action in ("disable", "enable"):  # changes before the windows ever changed
            assert await ref.ask(lambda r, a=action: Operate(a, "test", r)) is None
            check()
        grant = await reserve(ref, tokens=100)
        assert isinstance(grant, Granted)
        check()
        before = h.board.keys["k"]
        headers = QuotaSignal(limit_requests=10, remaining_requests=2, limit_tokens=400, remaining_tokens=150)
        await ref.tell(Settle(grant.reservation_id, Outcome(None, signal=headers, latency_s=0.2)))
        check()
        assert before.in_flight == 1 and h.board.keys["k"].in_flight == 0
        assert before.quota != h.board.keys["k"].quota  # the earlier snapshot kept its own windows
        for _ in range(3):  # up to the rpm limit: the key turns exhausted
            g = await reserve(ref, tokens=10)
            if isinstance(g, Granted):
                await ref.tell(Settle(g.reservation_id, Outcome(None)))
            check()
        g = await reserve(ref)
        assert isinstance(g, Refusal)
        check()
        await trio.sleep(70)  # the windows slide: the view is of the last publish, as the snapshot is
        check()
        g = await reserve(ref)
        assert isinstance(g, Granted)
        await ref.tell(Settle(g.reservation_id, Outcome(FailureClass.RATE_LIMITED, retry_after=20)))
        check()
        assert h.board.keys["k"].lifecycle.state is KeyState.THROTTLED
        await trio.sleep(21)
        check()
        nursery.cancel_scope.cancel()
