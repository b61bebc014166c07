"""BudgetActor on its own: holds carry a lease, so a settlement lost to a restart frees its hold on time
(an idle actor too), and a charge that comes after that is still charged."""

from __future__ import annotations

import math
from decimal import Decimal

import trio
import trio.testing

from apikeyrouter.actors.budget import BudgetActor
from apikeyrouter.domain.budget import BudgetSpec, HoldExpired
from apikeyrouter.domain.refusal import Refusal
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.messages.budget import BudgetCommand, Charge, Free, Hold, HoldPlaced
from apikeyrouter.observe import BudgetHoldExpired, EventBus
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.writer import run_store

D = Decimal
SPECS = [BudgetSpec("global", D("1")), BudgetSpec("key:k", D("0.5"))]


async def hold(ref: ActorRef[BudgetCommand], hold_id: str, amount: str, lease_until: float) -> HoldPlaced | Refusal:
    answer: HoldPlaced | Refusal = await ref.ask(
        lambda r: Hold(hold_id, ("global", "key:k"), D(amount), lease_until, r, "k")
    )
    return answer


def budgets(ref: ActorRef[BudgetCommand]) -> dict[str, tuple[Decimal, Decimal]]:
    state = ref.snapshot().state
    return {bid: (D(b["spent"]), D(b["reserved"])) for bid, b in state.items()}


async def test_holds_restored_by_a_restart_expire_at_their_lease_on_an_idle_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = EventBus()
    expired: list[BudgetHoldExpired] = []
    events.observe(BudgetHoldExpired, expired.append)
    async with run_store(MemoryStore()) as store, trio.open_nursery() as nursery:
        first = BudgetActor(SPECS, store=store, events=events)
        ref = await nursery.start(first.run)
        assert isinstance(await hold(ref, "lost", "0.2", 30.0), HoldPlaced)
        assert isinstance(await hold(ref, "slow", "0.2", 30.0), HoldPlaced)
        await trio.sleep(5)
        first.stop()  # restarting: the Free of "lost" and the Charge of "slow" find no actor
        await trio.testing.wait_all_tasks_blocked()
        ref = await nursery.start(BudgetActor(SPECS, store=store, events=events).run)
        assert budgets(ref) == {"global": (0, D("0.4")), "key:k": (0, D("0.4"))}  # restored
        await trio.sleep_until(30.0)  # nothing is sent to the actor: its timer frees them
        await trio.testing.wait_all_tasks_blocked()
        assert budgets(ref) == {"global": (0, 0), "key:k": (0, 0)}
        assert [e.expired for e in expired] == [
            HoldExpired("lost", ("global", "key:k"), D("0.2"), 30.0),
            HoldExpired("slow", ("global", "key:k"), D("0.2"), 30.0),
        ]
        await trio.sleep_until(40.0)
        ref.tell_nowait(Charge("slow", D("0.15")))  # late: still charged, to the budgets the hold named
        ref.tell_nowait(Free("lost"))  # late: nothing to do
        await trio.testing.wait_all_tasks_blocked()
        assert budgets(ref) == {"global": (D("0.15"), 0), "key:k": (D("0.15"), 0)}
        nursery.cancel_scope.cancel()


async def test_an_expired_hold_is_freed_before_the_message_that_finds_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The timer may not have run yet when a message comes at the lease's end: the message sees the
    # budget with the expired hold already freed (it is applied first, on every message).
    async with run_store(MemoryStore()) as store, trio.open_nursery() as nursery:
        ref = await nursery.start(BudgetActor(SPECS, store=store, events=EventBus()).run)
        assert isinstance(await hold(ref, "lost", "0.5", 10.0), HoldPlaced)
        assert isinstance(await hold(ref, "refused", "0.1", math.inf), Refusal)
        autojump_clock.jump(10.0)  # no checkpoint between the jump and the ask: the timer has not woken
        assert isinstance(await hold(ref, "fits", "0.5", math.inf), HoldPlaced)
        assert budgets(ref) == {"global": (0, D("0.5")), "key:k": (0, D("0.5"))}
        nursery.cancel_scope.cancel()
