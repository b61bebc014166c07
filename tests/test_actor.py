"""Ask/tell semantics of the actor kernel."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from apikeyrouter.errors import ActorCrashed, ActorStopped, MailboxFull
from apikeyrouter.kernel import Actor, ActorRef
from tests.kernel_actors import Add, Block, Boom, Counter, CounterMsg, CounterState, CrashNow, Exit, Get, Later


async def test_tell_then_ask_replies_in_order() -> None:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(Counter("c").run)
        await ref.tell(Add(2))
        ref.tell_nowait(Add(3))
        assert await ref.ask(Get) == 5
        nursery.cancel_scope.cancel()


async def test_ask_error_goes_to_asker_and_crashes_actor() -> None:
    counter = Counter("c")
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="boom")):
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(counter.run)
            with pytest.raises(ActorCrashed) as info:
                await ref.ask(Boom)
            assert isinstance(info.value.cause, RuntimeError)
            assert info.value.actor == "c"
    assert counter.status == "crashed"
    assert counter.last_crash == "RuntimeError: boom"


async def test_queued_and_in_progress_asks_answered_when_actor_stops(autojump_clock: trio.testing.MockClock) -> None:
    counter = Counter("c", mailbox=8)
    results: list[object] = []

    async def ask_and_record(ref: ActorRef[CounterMsg], which: str) -> None:
        try:
            results.append((which, await ref.ask(Get if which == "get" else (lambda r: Later(100, r)))))
        except ActorStopped as exc:
            results.append((which, type(exc).__name__))

    async with trio.open_nursery() as askers, trio.open_nursery() as actor_nursery:
        ref = await actor_nursery.start(counter.run)
        gate = trio.Event()
        askers.start_soon(ask_and_record, ref, "later")  # becomes an ask in progress
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(Block(gate))  # hold the loop so the next asks stay queued
        for _ in range(3):
            askers.start_soon(ask_and_record, ref, "get")
        await trio.testing.wait_all_tasks_blocked()
        assert counter.snapshot().mailbox_depth == 3
        counter.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(results) == [("get", "ActorStopped")] * 3  # queued asks answered at once
        await trio.sleep(1)  # a grace of 1 s, then the background work is cancelled, as a supervisor does
        actor_nursery.cancel_scope.cancel()
    assert sorted(results) == [("get", "ActorStopped")] * 3 + [("later", "ActorStopped")]
    assert trio.current_time() == 1


async def test_graceful_stop_lets_asks_in_progress_finish(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        counter = Counter("c")
        ref = await nursery.start(counter.run)
        await ref.tell(Add(4))
        reply = ref.ask_nowait(lambda r: Later(3, r))
        await trio.testing.wait_all_tasks_blocked()
        counter.stop()
        assert await reply.wait() == 4
        assert trio.current_time() == 3
    assert counter.status == "stopped"


async def test_crash_answers_queued_asks_with_actor_crashed() -> None:
    counter = Counter("c")
    answers: list[str] = []

    async def asker(ref: ActorRef[CounterMsg]) -> None:
        try:
            await ref.ask(Get)
        except ActorCrashed:
            answers.append("crashed")

    with pytest.RaisesGroup(RuntimeError):
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(counter.run)
            gate = trio.Event()
            await ref.tell(Block(gate))
            await ref.tell(CrashNow())
            async with trio.open_nursery() as askers:
                for _ in range(2):
                    askers.start_soon(asker, ref)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
    assert answers == ["crashed", "crashed"]


async def test_caller_cancelled_mid_ask_leaves_actor_unaffected(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        counter = Counter("c")
        ref = await nursery.start(counter.run)
        with trio.move_on_after(1) as scope:
            await ref.ask(lambda r: Later(5, r))
        assert scope.cancelled_caught
        await trio.sleep(10)  # the late reply lands on nobody: dropped quietly
        await ref.tell(Add(1))
        assert await ref.ask(Get) == 1
        assert counter.status == "running"
        nursery.cancel_scope.cancel()


async def test_tell_nowait_on_full_mailbox_raises_typed_error() -> None:
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(Counter("c", mailbox=2).run)
        gate = trio.Event()
        await ref.tell(Block(gate))
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait(Add(1))
        ref.tell_nowait(Add(1))
        with pytest.raises(MailboxFull) as info:
            ref.tell_nowait(Add(1))
        assert info.value.capacity == 2
        gate.set()
        assert await ref.ask(Get) == 2
        nursery.cancel_scope.cancel()


async def test_ask_after_stop_fails_fast() -> None:
    async with trio.open_nursery() as nursery:
        counter = Counter("c")
        ref = await nursery.start(counter.run)
        await ref.tell(Exit())
    assert counter.status == "stopped"
    with pytest.raises(ActorStopped):
        await ref.ask(Get)
    with pytest.raises(ActorStopped):
        ref.tell_nowait(Add(1))


async def test_snapshot_reports_identity_mailbox_and_state() -> None:
    async with trio.open_nursery() as nursery:
        counter = Counter("c", mailbox=4)
        ref = await nursery.start(counter.run)
        await ref.tell(Add(7))
        await ref.ask(Get)
        snap = ref.snapshot()
        assert (snap.name, snap.kind, snap.status) == ("c", "counter", "running")
        assert (snap.mailbox_depth, snap.mailbox_capacity) == (0, 4)
        assert snap.handled == 2
        assert snap.state == CounterState(7)
        nursery.cancel_scope.cancel()


def test_unbounded_mailbox_is_refused() -> None:
    with pytest.raises(ValueError, match="bounded"):
        Counter("c", mailbox=0)
    with pytest.raises(ValueError, match="bounded"):
        Actor("x", mailbox=float("inf"))  # type: ignore[arg-type]


async def test_cancellation_is_not_swallowed_by_the_actor() -> None:
    counter = Counter("c")
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(counter.run)
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert counter.status == "stopped"


class Drains(Counter):
    """An actor whose `stop` drains its queue first (as the key actor's does)."""

    def stop(self) -> None:
        self.stop_after_queue()


async def test_an_actor_whose_stop_drains_can_be_stopped_before_it_runs() -> None:
    # It recursed (stop -> stop_after_queue -> stop ...) until RecursionError: a key actor stopped
    # during its pre_start (a reload or shutdown racing a restart) took its supervisor down with it.
    actor = Drains("d")
    actor.stop()
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(actor.run)
        with pytest.raises(ActorStopped):
            await ref.ask(Get)
    assert actor.status == "stopped"
