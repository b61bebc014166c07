"""Exact budgets under concurrency: a hard budget is never overspent, whatever runs at once."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import trio

from apikeyrouter import BudgetExceeded, InvalidRequest
from tests.routing_env import chat, routing_env, settle_down

LIMIT = Decimal("0.0001")


async def test_global_budget_is_never_overspent_by_concurrent_requests() -> None:
    async with routing_env(
        [(f"k{i}", f"sk-sim-{i}", {}) for i in range(4)],
        config={"budgets": {"global": {"limit": str(LIMIT), "period": "day"}}},
    ) as env:
        served: list[Decimal] = []
        refused: list[str] = []

        async def one(i: int) -> None:
            try:
                response = await env.router.route(chat(f"request {i}"))
            except BudgetExceeded as exc:
                refused.append(str(exc))
            else:
                assert response.metadata is not None
                served.append(response.metadata.cost)

        for _ in range(3):  # waves: later ones see what earlier ones really spent
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
            await settle_down(env.router)
        state = env.router.budgets()["global"]
        assert Decimal(state["spent"]) == sum(served)
        assert Decimal(state["spent"]) <= LIMIT and Decimal(state["reserved"]) == 0
        assert served and refused  # some fit, the rest were refused rather than overspending
        assert "budget global" in refused[0]


async def test_key_budget_moves_traffic_to_other_keys() -> None:
    async with routing_env(
        [
            ("capped", "sk-sim-capped", {"budget": Decimal("0.00003"), "metadata": {"quality": "premium"}}),
            ("open", "sk-sim-open", {}),
        ],
        config={"routing": {"objective": "quality"}},
    ) as env:
        used = [(await env.router.route(chat(f"n{i}"))).metadata.key_used for i in range(6)]  # type: ignore[union-attr]
        assert used[0] == "capped" and used[-1] == "open"
        assert "capped" not in used[used.index("open") :]


async def test_a_key_budget_given_at_run_time_is_per_calendar_month_like_a_configured_one() -> None:
    async with routing_env(
        [("capped", "sk-sim-capped", {"budget": Decimal("5")})], config={"budgets": {"timezone": "Europe/Paris"}}
    ) as env:
        state = env.router.budgets()["key:capped"]
        assert state["period"] == "month"
        paris = ZoneInfo("Europe/Paris")
        start, end = (datetime.fromisoformat(state[f]).astimezone(paris) for f in ("period_start", "period_end"))
        # Midnight on the 1st in Paris, to midnight on the next 1st: not 30 days from when the key was added.
        assert (start.day, start.hour, start.minute, end.day, end.hour) == (1, 0, 0, 1, 0)
        assert end.month == start.month % 12 + 1


async def test_two_adds_of_one_key_id_at_once_keep_the_first_and_its_budget() -> None:
    async with routing_env([("capped", "sk-sim-capped", {})]) as env:
        results: dict[str, object] = {}

        async def add(secret: str, budget: str) -> None:
            try:
                results[budget] = await env.router.register_key(secret, "openai", key_id="twin", budget=Decimal(budget))
            except InvalidRequest as exc:
                results[budget] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, "sk-sim-twin-a", "5")
            nursery.start_soon(add, "sk-sim-twin-b", "7")
        refused = [b for b, r in results.items() if isinstance(r, InvalidRequest)]
        assert len(refused) == 1 and "already registered" in str(results[refused[0]])
        kept = "7" if refused == ["5"] else "5"
        assert env.router.budgets()["key:twin"]["limit"] == kept  # the refused one did not overwrite it
