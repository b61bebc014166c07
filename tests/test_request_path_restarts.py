"""The request path across actor restarts, on virtual time: no request and no budget hold is lost because
the router, a key or the budget actor restarted while the request needed it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import NoKeyAvailable
from apikeyrouter.config import parse_config
from apikeyrouter.domain.refusal import RefusalKind
from apikeyrouter.messages.key import InjectCrash
from apikeyrouter.observe import BudgetHoldExpired, event_json
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.sim import parse_sim_config
from apikeyrouter.sim.provider import SimProvider
from apikeyrouter.store.memory import MemoryStore
from tests.routing_env import chat
from tests.sim_transport import SimAdapter, SimTransport, sim_env

BUDGET = {"budgets": {"global": {"limit": "1", "period": "day"}}}


class Poison:
    """Not a router message: the router actor's `match` ends in `assert_never`, so it crashes on it."""


class FlakyStore(MemoryStore):
    """A store that fails once (a disk or database hiccup): the write of the first charge (a ledger that
    has spent money), or of the first hold."""

    def __init__(self, *, fail_on: str = "charge") -> None:
        super().__init__()
        self.failures_left = 1
        self._fail_on = fail_on

    def save(self, key: str, record: Any) -> None:
        if key == "budgets" and self.failures_left and self._due(record):
            self.failures_left -= 1
            raise OSError("the store is unavailable")
        super().save(key, record)

    def _due(self, ledger: Any) -> bool:
        if self._fail_on == "hold":
            return bool(ledger.holds)
        return any(b.spent for b in ledger.budgets.values())


class BrokenPrices:
    """A price table that breaks on lookup: the router actor crashes on every decision that prices a key."""

    def price(self, model: str) -> Any:
        raise RuntimeError("price table unavailable")


@asynccontextmanager
async def router_on(store: MemoryStore, config: dict[str, Any]) -> AsyncIterator[ApiKeyRouter]:
    transport = SimTransport(SimProvider(parse_sim_config({"defaults": {"latency_ms": 100}})))
    async with ApiKeyRouter(parse_config(config, env={}), store=store) as router:
        await router.register_provider("openai", SimAdapter(transport))
        await router.register_key("sk-sim-k", "openai", key_id="k")
        yield router


async def test_a_decision_asked_while_the_router_actor_restarts_waits_for_it(autojump_clock: object) -> None:
    # The Decide ask landed behind the message that crashed the router actor: it was answered with
    # ActorCrashed, and the caller got that kernel error instead of its response.
    async with sim_env([("k", "sk-sim-k", {})], sim_defaults={"latency_ms": 100}) as env:
        env.router.router_ref().tell_nowait(Poison())  # type: ignore[arg-type]
        with trio.fail_after(10):
            response = await env.router.route(chat("while the router restarts"))
        assert response.metadata is not None and response.metadata.key_used == "k"
        router = next(n for n in env.router.tree().children if n.name == "router")
        assert router.restarts == 1


async def test_a_router_actor_that_keeps_crashing_is_a_typed_error_within_a_bounded_time(
    autojump_clock: object,
) -> None:
    # Each retry waits a little longer; a router that never comes back is `NoKeyAvailable` (nothing was
    # sent, the caller may retry), not an ActorCrashed from the kernel, and not a wait for the deadline.
    # The cost objective prices every key it scores (an objective that gives cost no weight never looks).
    async with sim_env([], config={"routing": {"objective": "cost"}}) as env:
        adapter = SimAdapter(env.transport, provider="priceless")
        adapter.prices = BrokenPrices()  # type: ignore[assignment]
        await env.router.register_provider("priceless", adapter)
        await env.router.register_key("sk-sim-k", "priceless", key_id="k")
        start = trio.current_time()
        with trio.fail_after(30), pytest.raises(NoKeyAvailable) as info:
            await env.router.route(chat("never decided"))
        assert "router" in info.value.reasons and "crashed" in info.value.reasons["router"]
        assert trio.current_time() - start == pytest.approx(0.35)
        await trio.testing.wait_all_tasks_blocked()
        router = next(n for n in env.router.tree().children if n.name == "router")
        assert router.restarts == 4


async def test_a_reservation_asked_of_a_restarting_key_moves_the_request_to_the_next_key(
    autojump_clock: object,
) -> None:
    keys = [("first", "sk-sim-first", {"metadata": {"quality": "premium"}}), ("second", "sk-sim-second", {})]
    async with sim_env(keys, config={"routing": {"objective": "quality"}}) as env:
        env.router.key_ref("first").tell_nowait(InjectCrash("restart under a request"))
        with trio.fail_after(10):
            response = await env.router.route(chat("while first restarts"))
        meta = response.metadata
        assert meta is not None and meta.key_used == "second" and meta.decision is not None
        assert [(r.key_id, r.kind) for r in meta.decision.refused] == [("first", RefusalKind.UNAVAILABLE)]
        with trio.fail_after(10):
            again = await env.router.route(chat("after the restart"))
        assert again.metadata is not None and again.metadata.key_used == "first"


async def test_the_store_given_to_the_router_is_the_one_it_keeps_its_records_in() -> None:
    # `store or MemoryStore()`: an empty store has length 0, so it was falsy and quietly replaced.
    store = MemoryStore()
    async with ApiKeyRouter(store=store) as router:
        assert router.store is store
        assert store.load("budgets") is not None


async def test_a_hold_whose_charge_crashed_the_budget_actor_expires_at_its_lease(autojump_clock: object) -> None:
    # The charge's write failed, so the budget actor crashed and came back with the ledger from before
    # it: the hold was restored, and with no lease nothing ever freed it. It now expires at its lease
    # (the caller's deadline, 20 s, plus two graces), publicly, and the budget is whole again.
    store = FlakyStore()
    async with router_on(store, BUDGET) as router:
        expired: list[BudgetHoldExpired] = []
        router.events.observe(BudgetHoldExpired, expired.append)
        with trio.fail_after(20):
            response = await router.route(chat("charged into a failing store"))  # held at t = 0
        assert response.metadata is not None
        await trio.testing.wait_all_tasks_blocked()
        budgets = next(n for n in router.tree().children if n.name == "budgets")
        assert budgets.restarts == 1 and "OSError" in (budgets.last_crash or "")
        held = Decimal(router.budgets()["global"]["reserved"])
        assert held > 0  # the restored hold
        await trio.sleep_until(29.999)
        assert Decimal(router.budgets()["global"]["reserved"]) == held
        await trio.sleep_until(30.0)
        await trio.testing.wait_all_tasks_blocked()
        assert Decimal(router.budgets()["global"]["reserved"]) == 0
        assert [(e.expired.amount, e.expired.budgets, e.at) for e in expired] == [(held, ("global",), 30.0)]
        shown = event_json(expired[0], 0.0)
        assert shown["kind"] == "budget.hold_expired" and shown["amount"] == str(held)


async def test_a_hold_asked_while_the_budget_actor_restarts_is_asked_again(autojump_clock: object) -> None:
    # The hold's write failed, so the budget actor crashed on it and the ask was answered ActorCrashed:
    # that was a refusal by "budgets", and the request was refused as BudgetExceeded with money to spare.
    store = FlakyStore(fail_on="hold")
    async with router_on(store, BUDGET) as router:
        with trio.fail_after(20):
            response = await router.route(chat("held across a restart"))
        assert response.metadata is not None and response.metadata.key_used == "k"
        budgets = next(n for n in router.tree().children if n.name == "budgets")
        assert budgets.restarts == 1 and "OSError" in (budgets.last_crash or "")
        await trio.testing.wait_all_tasks_blocked()
        shown = router.budgets()["global"]
        assert shown.items() >= {"limit": "1", "spent": str(response.metadata.cost), "reserved": "0"}.items()
