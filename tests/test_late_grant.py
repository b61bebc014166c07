"""A key that answers a reservation after the request stopped waiting: the late grant is given back at
once, not held until its lease ends (the key's in-flight slot and quota would be taken by nobody)."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import NoKeyAvailable
from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.key import KeyActor
from apikeyrouter.actors.router import RouterActor
from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.keystate import KeySettings
from apikeyrouter.domain.refusal import RefusalKind
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.kernel.actor import Actor, ActorRef
from apikeyrouter.messages.key import KeyCommand, Reserve
from apikeyrouter.messages.router import RouterCommand
from apikeyrouter.observe import EventBus
from apikeyrouter.runtime.acquire import Request, acquire
from apikeyrouter.runtime.asks import GRACE
from apikeyrouter.runtime.deps import Routing
from apikeyrouter.secret import Secret
from apikeyrouter.store.memory import MemoryStore
from tests.routing_env import chat

LATE = GRACE + 1.0  # the key answers one second after the request gave up on it


class SlowLine(Actor[KeyCommand]):
    """Stands between the request path and a real key actor: hands every `Reserve` on `LATE` seconds
    after it came, everything else at once."""

    def __init__(self, key: ActorRef[KeyCommand]) -> None:
        super().__init__("slow-line")
        self._key = key

    def receive(self, msg: KeyCommand) -> None:
        if isinstance(msg, Reserve):
            self.nursery.start_soon(self._later, msg)
        else:
            self._key.tell_nowait(msg)

    async def _later(self, msg: Reserve) -> None:
        await trio.sleep(LATE)
        await self._key.tell(msg)


class FreeAdapter:
    def estimate(self, intent: RequestIntent) -> CostEstimate:
        return CostEstimate(10, 32, Decimal(0))


class Deps:
    """What `acquire` needs: the router and the one key (behind its slow line); no budgets."""

    def __init__(self, board: SnapshotBoard, router: ActorRef[RouterCommand], key: ActorRef[KeyCommand]) -> None:
        self.board = board
        self.routing = Routing(objective="reliability", max_attempts=3, wait_for_reset=True, max_wait=60.0)
        self.wall_offset = 0.0
        self.budgets_enabled = False
        self.shared = None
        self._router = router
        self._key = key
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def adapter(self, provider_id: str) -> Any:
        return FreeAdapter()

    def key_ref(self, key_id: str) -> ActorRef[KeyCommand]:
        return self._key

    def router_ref(self) -> ActorRef[RouterCommand]:
        return self._router


async def test_a_grant_that_comes_after_the_request_gave_up_is_released_at_once(autojump_clock: object) -> None:
    board, events = SnapshotBoard(), EventBus()
    key = KeyActor(
        KeySettings(id="k", provider="p"), Secret("sk-test-slow"), store=MemoryStore(), board=board, events=events
    )
    router = RouterActor(board=board, events=events, prices=lambda provider, model: None)
    async with trio.open_nursery() as nursery:
        key_ref = await nursery.start(key.run)
        router_ref = await nursery.start(router.run)
        line = await nursery.start(SlowLine(key_ref).run)
        deps = Deps(board, router_ref, line)
        req = Request("req-1", RequestIntent.from_openai(chat("slow key")), "reliability", None, 600.0, 0.0)
        with pytest.raises(NoKeyAvailable) as info:
            await acquire(deps, req)  # type: ignore[arg-type]
        assert trio.current_time() == GRACE
        assert [(r.key_id, r.kind) for r in info.value.refusals] == [("k", RefusalKind.UNAVAILABLE)]
        await trio.sleep_until(LATE)  # the key grants now, to nobody
        await trio.testing.wait_all_tasks_blocked()
        assert board.keys["k"].in_flight == 0  # given back at once, not at the lease's end (t = 605)
        assert board.keys["k"].at == LATE
        nursery.cancel_scope.cancel()
