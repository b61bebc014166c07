"""OTP supervision semantics, with exact virtual times (autojump_clock)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import structlog.testing
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.errors import ActorStopped, SupervisorEscalation
from apikeyrouter.kernel import ActorRef
from apikeyrouter.kernel.spec import Child, ChildSpec, Restart, Strategy, SupervisorSpec
from apikeyrouter.supervisors import Supervisor
from tests.kernel_actors import Add, Counter, CounterMsg, CrashNow, Exit, Get

ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE


def counters(log: list[str], names: str = "abc", restart: Restart = Restart.PERMANENT, **kw: object) -> list[ChildSpec]:
    def factory(name: str) -> Callable[[], Child]:
        return lambda: Counter(name, log=log, **kw)  # type: ignore[arg-type]

    return [ChildSpec(n, factory(n), restart=restart, shutdown=1.0) for n in names]


def ref_of(sup: Supervisor, child_id: str) -> ActorRef[CounterMsg]:
    child = sup.child(child_id)
    assert isinstance(child, Counter)
    return child.ref


async def crash(sup: Supervisor, child_id: str) -> None:
    await ref_of(sup, child_id).tell(CrashNow())
    await trio.testing.wait_all_tasks_blocked()


async def test_children_start_in_order_and_stop_in_reverse_on_cancel() -> None:
    log: list[str] = []
    sup = Supervisor("root", children=counters(log))
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert log == ["start a", "start b", "start c"]
            assert [c.status for c in sup.which_children()] == ["running"] * 3
            outer.cancel()
    assert outer.cancelled_caught  # Cancelled propagated: nothing swallowed it
    assert log[3:] == ["stop c", "stop b", "stop a"]
    assert sup.status == "stopped"


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (ONE_FOR_ONE, ["start b"]),
        (ONE_FOR_ALL, ["stop c", "stop a", "start a", "start b", "start c"]),
        (REST_FOR_ONE, ["stop c", "start b", "start c"]),
    ],
)
async def test_strategies_restart_the_right_children(strategy: Strategy, expected: list[str]) -> None:
    log: list[str] = []
    sup = Supervisor("root", SupervisorSpec(strategy=strategy), counters(log))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        before = ref_of(sup, "b")
        del log[:]
        await crash(sup, "b")
        assert log == expected
        restarted = {c.id: c.restarts for c in sup.which_children()}
        assert restarted["b"] == 1
        # The ref is a stable address: it reaches the new instance.
        await before.tell(Add(2))
        assert await before.ask(Get) == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        (Restart.PERMANENT, "crash", True),
        (Restart.PERMANENT, "exit", True),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TEMPORARY, "crash", False),
        (Restart.TEMPORARY, "exit", False),
    ],
)
async def test_restart_types(restart: Restart, how: str, restarted: bool) -> None:
    log: list[str] = []
    sup = Supervisor("root", children=counters(log, "a", restart=restart))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await ref_of(sup, "a").tell(CrashNow() if how == "crash" else Exit())
        await trio.testing.wait_all_tasks_blocked()
        if restarted:
            assert log.count("start a") == 2
            assert [(c.id, c.restarts, c.status) for c in sup.which_children()] == [("a", 1, "running")]
        else:
            assert log.count("start a") == 1
            assert sup.which_children() == []
        nursery.cancel_scope.cancel()


async def test_one_for_all_does_not_restart_temporary_siblings() -> None:
    log: list[str] = []
    specs = counters(log, "a") + counters(log, "t", restart=Restart.TEMPORARY)
    sup = Supervisor("root", SupervisorSpec(strategy=ONE_FOR_ALL), specs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await crash(sup, "a")
        assert [c.id for c in sup.which_children()] == ["a"]
        assert log == ["start a", "start t", "stop t", "start a"]
        nursery.cancel_scope.cancel()


async def test_escalates_when_intensity_exceeded_within_period(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    inner = Supervisor("inner", SupervisorSpec(intensity=2, period=10), counters(log, "ab"))
    group = pytest.RaisesGroup(SupervisorEscalation, flatten_subgroups=True)
    with structlog.testing.capture_logs() as events, group as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(inner.run)
            for _ in range(3):
                await trio.sleep(1)
                await crash(inner, "a")
    # Crashes at t=1, 2, 3: the third restart within 10 s is one too many.
    assert trio.current_time() == 3
    escalation = info.value.exceptions[0]
    assert isinstance(escalation, SupervisorEscalation)
    assert (escalation.supervisor, escalation.child) == ("inner", "a")
    assert log[-1] == "stop b"  # a had crashed; b was stopped when the supervisor gave up
    assert inner.status == "crashed"
    crashed = [e for e in events if e["event"] == "child_crashed"]
    assert [(e["supervisor"], e["child"], e["reason"], e["restarts"]) for e in crashed] == [
        ("inner", "a", "RuntimeError: crash", 0),
        ("inner", "a", "RuntimeError: crash", 1),
        ("inner", "a", "RuntimeError: crash", 2),
    ]
    assert any(e["event"] == "supervisor_escalating" for e in events)


async def test_restarts_spread_beyond_the_period_never_escalate(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    sup = Supervisor("root", SupervisorSpec(intensity=1, period=5), counters(log, "a"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(6):
            await trio.sleep(5)  # exactly one period apart: the previous restart has left the window
            await crash(sup, "a")
        assert trio.current_time() == 30
        assert sup.which_children()[0].restarts == 6
        assert sup.status == "running"
        nursery.cancel_scope.cancel()


async def test_escalation_reaches_the_parent_which_restarts_the_subtree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    inner_spec = ChildSpec("inner", lambda: Supervisor("inner", SupervisorSpec(intensity=0), counters(log, "x")))
    root = Supervisor("root", SupervisorSpec(intensity=5, period=60), [inner_spec])
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            inner = root.child("inner")
            assert isinstance(inner, Supervisor)
            await crash(inner, "x")
            new_inner = root.child("inner")
            assert isinstance(new_inner, Supervisor) and new_inner is not inner
            assert new_inner.restarts == 1 and new_inner.status == "running"
            tree = root.tree()
            assert tree.children[0].name == "inner" and tree.children[0].restarts == 1
            assert tree.children[0].children[0].name == "x"
            nursery.cancel_scope.cancel()
    root_crash = [e for e in events if e["event"] == "child_crashed" and e["supervisor"] == "root"]
    assert root_crash[0]["child"] == "inner" and "SupervisorEscalation" in root_crash[0]["reason"]


async def test_restart_hook_restores_state() -> None:
    store: dict[str, int] = {}
    hooked: list[int] = []
    spec = ChildSpec("a", lambda: Counter("a", store=store), on_restart=lambda child, n: hooked.append(n))
    sup = Supervisor("root", children=[spec])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        ref = ref_of(sup, "a")
        await ref.tell(Add(5))
        await ref.tell(CrashNow())
        await trio.testing.wait_all_tasks_blocked()
        assert hooked == [1]
        assert await ref.ask(Get) == 5
        nursery.cancel_scope.cancel()


async def test_children_added_and_removed_at_run_time() -> None:
    log: list[str] = []
    sup = Supervisor("root", children=counters(log, "a"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        child = await sup.add_child(counters(log, "k")[0])
        assert isinstance(child, Counter) and child.status == "running"
        with pytest.raises(ValueError, match="already exists"):
            await sup.add_child(counters(log, "k")[0])
        assert [c.id for c in sup.which_children()] == ["a", "k"]
        assert await sup.remove_child("k") is True
        assert await sup.remove_child("k") is False
        assert [c.id for c in sup.which_children()] == ["a"]
        assert log == ["start a", "start k", "stop k"]
        nursery.cancel_scope.cancel()


async def test_each_grace_runs_from_when_the_supervisor_began_to_stop(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    slow = ChildSpec("slow", lambda: Counter("slow", log=log, stop_delay=1.5), shutdown=2.0)
    quick = ChildSpec("quick", lambda: Counter("quick", log=log, stop_delay=0.25), shutdown=2.0)
    sup = Supervisor("root", children=[quick, slow])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    # slow (stopped first) takes 1.5 s; quick, told then, still fits its 0.25 s inside the 2 s budget.
    assert trio.current_time() == 1.75
    assert log == ["start quick", "start slow", "stop slow", "stop quick"]
    assert sup.status == "stopped"


async def test_a_child_that_outlives_the_budget_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    slow = ChildSpec("slow", lambda: Counter("slow", log=log, stop_delay=10), shutdown=2.0)
    quick = ChildSpec("quick", lambda: Counter("quick", log=log, stop_delay=0.5), shutdown=2.0)
    sup = Supervisor("root", children=[quick, slow])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    # slow is cancelled at its 2 s grace, which is also the supervisor's whole budget: quick is told to
    # stop (it still comes after slow) and cancelled at once.
    assert trio.current_time() == 2.0
    assert log == ["start quick", "start slow"]
    assert [c.status for c in sup.which_children()] == ["stopped", "stopped"]


async def test_three_hung_children_stop_within_the_largest_grace_not_the_sum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    sup = Supervisor("root", children=counters(log, "abc", stop_delay=math.inf))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    assert trio.current_time() == 1.0  # not 3 s: the graces overlap
    assert sup.status == "stopped"


async def test_an_outside_cancel_stops_hung_children_within_the_largest_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    sup = Supervisor("root", children=counters(log, "abc", stop_delay=math.inf))
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            outer.cancel()
    assert outer.cancelled_caught
    assert trio.current_time() == 1.0
    assert sup.status == "stopped"


async def test_a_hung_grandchild_cannot_hold_the_root_past_its_parents_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    hung = ChildSpec("hung", lambda: Counter("hung", log=log, stop_delay=math.inf), shutdown=10.0)
    mid = ChildSpec("mid", lambda: Supervisor("mid", children=[hung]), shutdown=2.0)
    root = Supervisor("root", children=[*counters(log, "a"), mid])
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        root.stop()
    # mid's 2 s (its grace as root sees it) bounds its whole subtree; a then has nothing left of the
    # 2 s budget and is cancelled at once.
    assert trio.current_time() == 2.0
    assert root.status == "stopped"
    assert "stop hung" not in log


async def test_an_add_child_in_progress_is_answered_when_the_supervisor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    sup = Supervisor("root")
    answers: list[str] = []

    async def add_slow() -> None:
        try:
            with trio.fail_after(20):  # it used to hang: the interrupted ask was never answered
                await sup.add_child(ChildSpec("slow", lambda: Counter("slow", log=log, start_delay=5), shutdown=1.0))
        except ActorStopped:
            answers.append(f"stopped at {trio.current_time():g}")

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(add_slow)
        await trio.sleep(1)
        sup.stop()
    # The asker hears at once; the child still starting is stopped with the rest: its 1 s grace runs out
    # before its 5 s start does, and it is cancelled.
    assert answers == ["stopped at 1"]
    assert trio.current_time() == 2
    assert log == []
    assert sup.which_children() == []


# -- property: restart counting matches a reference model of OTP --------------------------------------


def reference_escalation(times: list[float], intensity: int, period: float) -> int | None:
    """Index of the crash at which OTP gives up, or None: counts crashes inside (t - period, t]."""
    for i, t in enumerate(times):
        if sum(1 for u in times[: i + 1] if t - u < period) > intensity:
            return i
    return None


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=40).map(lambda n: n / 4), min_size=1, max_size=12),
    intensity=st.integers(min_value=0, max_value=4),
    period=st.integers(min_value=1, max_value=20).map(float),
)
def test_restart_counting_matches_reference_model(gaps: list[float], intensity: int, period: float) -> None:
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    expected = reference_escalation(times, intensity, period)

    async def scenario() -> tuple[int | None, int]:
        sup = Supervisor("root", SupervisorSpec(intensity=intensity, period=period), counters([], "a"))
        crashes = 0
        escalated = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                for t in times:
                    await trio.sleep_until(t)
                    crashes += 1
                    await crash(sup, "a")
                    if sup.status != "running":
                        break
                nursery.cancel_scope.cancel()
        except* SupervisorEscalation:
            escalated = True
        return (crashes - 1 if escalated else None), crashes

    escalated_at, _ = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert escalated_at == expected
