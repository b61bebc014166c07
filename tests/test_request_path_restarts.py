"""The request path across actor restarts, on virtual time: no request and no budget hold is lost because
the router, a key or the budget actor restarted while the request needed it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import trio
import trio.testing

from apikeyrouter.config import parse_config
from apikeyrouter.observe import BudgetHoldExpired, event_json
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.sim import parse_sim_config
from apikeyrouter.sim.provider import SimProvider
from apikeyrouter.store.memory import MemoryStore
from tests.routing_env import chat
from tests.sim_transport import SimAdapter, SimTransport

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
