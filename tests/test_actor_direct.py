"""Direct delivery: an ask or tell to an idle actor whose `receive` is a plain `def` is handled at once in
the sender's task, and is indistinguishable from the actor taking it next (order, single writer, crash)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import assert_never

import attrs
import pytest
import trio
import trio.testing

from apikeyrouter.errors import ActorCrashed, ActorStopped
from apikeyrouter.kernel import Actor, ActorRef, Reply
from apikeyrouter.kernel.spec import ChildSpec
from apikeyrouter.supervisors import Supervisor
from tests.kernel_actors import Counter, Get


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Total:
    reply_to: Reply[int]


@attrs.frozen
class WhoRuns:
    """Answers with the task that ran the handler."""

    reply_to: Reply[trio.lowlevel.Task]


@attrs.frozen
class Boom:
    reply_to: Reply[int]


@attrs.frozen
class Hold:
    """A plain-def handler that must wait (as a key waits for room in the store): returns an awaitable."""

    until: trio.Event


@attrs.frozen
class AnswerAfter:
    """A plain-def handler whose answer comes from the awaitable it returns (or whose wait crashes)."""

    until: trio.Event
    reply_to: Reply[int]
    crash: bool = False
    drain: bool = False  # stop after the queue first (its handler ends the mailbox, then waits)


@attrs.frozen
class Bounce:
    """Tell `via` to tell us back `Add(n)` (a send that reaches us while our handler runs)."""

    via: ActorRef[Msg]
    n: int


@attrs.frozen
class AddTo:
    to: ActorRef[Msg]
    n: int


@attrs.frozen
class Later:
    """Answered by a background task: an ask in progress."""

    reply_to: Reply[int]


Msg = Add | Total | WhoRuns | Boom | Hold | AnswerAfter | Bounce | AddTo | Later


class SyncCounter(Actor[Msg]):
    def __init__(self, name: str = "sync", *, mailbox: int = 8) -> None:
        super().__init__(name, mailbox=mailbox)
        self.total = 0
        self.seen: list[str] = []
        self._inside = False

    def receive(self, msg: Msg) -> Awaitable[None] | None:
        assert not self._inside, "a handler ran inside another: two writers"
        self._inside = True
        try:
            return self._handle(msg)
        finally:
            self._inside = False

    def _handle(self, msg: Msg) -> Awaitable[None] | None:
        match msg:
            case Add(n=n):
                self.total += n
                self.seen.append(f"add {n}")
            case Total(reply_to=reply):
                self.seen.append("total")
                reply.send(self.total)
            case WhoRuns(reply_to=reply):
                reply.send(trio.lowlevel.current_task())
            case Boom():
                raise RuntimeError("boom")
            case Hold(until=until):
                self.seen.append("hold")
                return until.wait()  # awaited by the loop before it reads anything else
            case AnswerAfter(until=until, reply_to=reply, crash=crash, drain=drain):
                if drain:
                    self.stop_after_queue()
                return self._answer_after(until, reply, crash)
            case Bounce(via=via, n=n):
                via.tell_nowait(AddTo(self.ref, n))
                self.seen.append("bounced")
            case AddTo(to=to, n=n):
                to.tell_nowait(Add(n))
            case Later(reply_to=reply):
                self.nursery.start_soon(self._answer_later, reply)
            case _:
                assert_never(msg)
        return None

    async def _answer_after(self, until: trio.Event, reply: Reply[int], crash: bool) -> None:
        await until.wait()
        if crash:
            raise RuntimeError("crashed while waiting")
        reply.send(self.total)

    async def _answer_later(self, reply: Reply[int]) -> None:
        await trio.sleep(10)
        reply.send(self.total)


async def started(nursery: trio.Nursery, actor: Actor[Msg]) -> ActorRef[Msg]:
    ref: ActorRef[Msg] = await nursery.start(actor.run)
    await trio.testing.wait_all_tasks_blocked()  # its loop now waits on an empty mailbox
    return ref


async def test_an_idle_sync_actor_handles_an_ask_in_the_askers_task() -> None:
    actor = SyncCounter()
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        ref.tell_nowait(Add(2))
        await ref.tell(Add(3))
        assert await ref.ask(WhoRuns) is trio.lowlevel.current_task()
        assert await ref.ask(Total) == 5
        assert actor.snapshot().handled == 4
        nursery.cancel_scope.cancel()


async def test_an_async_handler_actor_never_takes_the_direct_path() -> None:
    counter = Counter("async")
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(counter.run)
        await trio.testing.wait_all_tasks_blocked()
        me = trio.lowlevel.current_task()

        seen: list[trio.lowlevel.Task] = []
        real = counter.receive

        async def spy(msg: object) -> None:
            seen.append(trio.lowlevel.current_task())
            await real(msg)  # type: ignore[arg-type]

        counter.receive = spy  # type: ignore[method-assign]
        assert await ref.ask(Get) == 0
        assert seen and seen[0] is not me
        nursery.cancel_scope.cancel()


async def test_messages_queued_while_the_actor_waits_run_after_it_in_order() -> None:
    actor = SyncCounter()
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        gate = trio.Event()
        ref.tell_nowait(Hold(gate))  # handled directly, but must wait: the actor is busy until the gate opens
        ref.tell_nowait(Add(1))
        ref.tell_nowait(Add(2))
        totals: list[int] = []
        nursery.start_soon(lambda: _ask_total(ref, totals))
        await trio.testing.wait_all_tasks_blocked()
        assert actor.snapshot().mailbox_depth == 3  # queued behind the wait, not run directly
        assert totals == []
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert actor.seen == ["hold", "add 1", "add 2", "total"]
        assert totals == [3]
        # Idle again: direct once more.
        assert await ref.ask(WhoRuns) is trio.lowlevel.current_task()
        nursery.cancel_scope.cancel()


async def _ask_total(ref: ActorRef[Msg], into: list[int]) -> None:
    into.append(await ref.ask(Total))


async def test_a_message_handed_to_the_parked_loop_runs_before_a_later_direct_ask() -> None:
    a, b = SyncCounter("a"), SyncCounter("b")
    async with trio.open_nursery() as nursery:
        ref_a = await started(nursery, a)
        ref_b = await started(nursery, b)
        # a's handler tells b, whose handler tells a back: that tell reaches a while a's handler runs,
        # so it goes to a's mailbox (handed to its parked loop). The ask after it must not overtake it.
        ref_a.tell_nowait(Bounce(ref_b, 7))
        assert a.seen == ["bounced"]
        assert await ref_a.ask(Total) == 7
        assert a.seen == ["bounced", "add 7", "total"]
        nursery.cancel_scope.cancel()


async def test_a_crash_in_a_direct_handler_fails_the_ask_and_restarts_the_actor() -> None:
    made: list[SyncCounter] = []

    def make() -> SyncCounter:
        made.append(SyncCounter("c"))
        return made[-1]

    sup = Supervisor("root", children=[ChildSpec("c", make, shutdown=1.0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        ref: ActorRef[Msg] = made[0].ref
        ref.tell_nowait(Add(4))
        with pytest.raises(ActorCrashed) as info:
            await ref.ask(Boom)
        assert isinstance(info.value.cause, RuntimeError)
        await trio.testing.wait_all_tasks_blocked()
        assert len(made) == 2 and made[0].status == "crashed"
        assert made[0].last_crash == "RuntimeError: boom"
        assert [(c.restarts, c.status) for c in sup.which_children()] == [(1, "running")]
        assert await ref.ask(Total) == 0  # the new instance, reached through the same ref
        nursery.cancel_scope.cancel()


async def test_a_tell_after_a_direct_crash_is_not_run_by_the_dead_instance() -> None:
    actor = SyncCounter()
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="boom")):
        async with trio.open_nursery() as nursery:
            ref = await started(nursery, actor)
            reply = ref.ask_nowait(Boom)
            ref.tell_nowait(Add(1))  # queued: the crashed actor answers nothing more
            with pytest.raises(ActorCrashed):
                reply.result()
    assert actor.total == 0 and actor.status == "crashed"


async def test_a_draining_or_stopped_actor_refuses_instead_of_handling_directly() -> None:
    draining, stopped = SyncCounter("draining"), SyncCounter("stopped")
    async with trio.open_nursery() as nursery:
        ref_d = await started(nursery, draining)
        ref_s = await started(nursery, stopped)
        draining.stop_after_queue()
        stopped.stop()
        for ref in (ref_d, ref_s):
            with pytest.raises(ActorStopped):
                await ref.ask(Total)
            with pytest.raises(ActorStopped):
                ref.tell_nowait(Add(1))
    assert draining.seen == stopped.seen == []


async def test_an_already_cancelled_asker_sends_nothing() -> None:
    actor = SyncCounter()
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.ask(Total)
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.tell(Add(1))
        assert scope.cancelled_caught
        assert actor.seen == []
        nursery.cancel_scope.cancel()


async def test_an_ask_a_direct_handler_leaves_unanswered_is_answered_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = SyncCounter()
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        reply = ref.ask_nowait(Later)
        assert not reply.done and actor.snapshot().handled == 1
        actor.stop()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()  # the background answer never comes
    with pytest.raises(ActorStopped):
        reply.result()


async def test_a_direct_ask_answered_by_the_wait_its_handler_returned() -> None:
    actor = SyncCounter()
    answers: list[int] = []
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        ref.tell_nowait(Add(5))
        gate = trio.Event()

        async def ask_slow() -> None:
            answers.append(await ref.ask(lambda r: AnswerAfter(gate, r)))

        nursery.start_soon(ask_slow)
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait(Add(1))  # the actor is busy with the wait: queued behind it
        assert answers == [] and actor.total == 5
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [5] and actor.total == 6
        assert actor.snapshot().handled == 3
        nursery.cancel_scope.cancel()


async def test_a_crash_in_the_wait_a_direct_handler_returned_crashes_the_actor() -> None:
    actor = SyncCounter()
    gate = trio.Event()
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="crashed while waiting")):
        async with trio.open_nursery() as nursery:
            ref = await started(nursery, actor)
            reply = ref.ask_nowait(lambda r: AnswerAfter(gate, r, crash=True))
            queued = ref.ask_nowait(Total)
            gate.set()
    with pytest.raises(ActorCrashed):
        reply.result()
    with pytest.raises(ActorCrashed):
        queued.result()
    assert actor.status == "crashed"


async def test_an_ask_taken_directly_as_the_actor_is_cancelled_from_outside_is_answered_though_its_wait_never_ran(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cancelled from outside (a parent's nursery, not `stop`), a parked actor may take one more message
    # directly before its loop sees the cancellation. When that handler returns a wait, the loop is gone
    # before it can run it: the ask must still be answered, not left waiting for ever.
    actor = SyncCounter()
    gate = trio.Event()
    inner = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def run_actor(task_status: trio.TaskStatus[ActorRef[Msg]] = trio.TASK_STATUS_IGNORED) -> None:
            with inner:
                await actor.run(task_status=task_status)

        ref = await nursery.start(run_actor)
        await trio.testing.wait_all_tasks_blocked()
        inner.cancel()  # from outside: the actor's loop has not run since
        reply = ref.ask_nowait(lambda r: AnswerAfter(gate, r))
        assert actor.snapshot().handled == 0  # taken, its wait handed to the loop
        await trio.sleep(1)
    assert actor.status == "stopped"
    assert reply.done  # before the fix: never answered (its asker would wait for ever)
    with pytest.raises(ActorStopped):
        reply.result()


async def test_a_direct_handler_that_ends_its_mailbox_and_waits_still_runs_its_wait() -> None:
    # The mailbox path awaits what a handler returned before it reads the end of the mailbox; the direct
    # path must too (before the fix the loop saw the end first and the wait never ran).
    actor = SyncCounter()
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        ref = await started(nursery, actor)
        ref.tell_nowait(Add(3))
        reply = ref.ask_nowait(lambda r: AnswerAfter(gate, r, drain=True))
        await trio.testing.wait_all_tasks_blocked()
        assert actor.status == "running" and not reply.done  # still waiting, as its handler asked
        gate.set()
    assert reply.result() == 3
    assert actor.status == "stopped" and actor.snapshot().handled == 2
