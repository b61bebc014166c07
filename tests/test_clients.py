"""Clients and teams: their budgets and rate limits hold exactly, however many of their requests run at once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import BudgetExceeded, ClientRateLimited, InvalidRequest
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.observe import BudgetSoftExceededEvent, EventBus
from tests.routing_env import chat
from tests.sim_transport import SimAdapter, SimTransport, sim_env

KEYS = [("k1", "sk-sim-1", {}), ("k2", "sk-sim-2", {})]
SLOW = {"latency_ms": 500}  # every answer takes 0.5 s: a burst is all held before anything settles


def worst_case() -> Decimal:
    """What a budget holds for one `chat()` request: its worst-case cost on the simulated provider."""
    adapter = SimAdapter(SimTransport(None))  # type: ignore[arg-type]
    return adapter.estimate(RequestIntent.from_openai(chat("burst"))).worst_case_cost


def clients_config(n: int, **budgets: Any) -> dict[str, Any]:
    limit = str(worst_case() * n)
    return {
        "teams": [{"id": "search", "budget": {"limit": limit, "period": "day"}}],
        "clients": [
            {"id": "acme", "budget": {"limit": limit, "period": "hour"}},
            *({"id": f"member{i}", "team": "search"} for i in range(5)),
        ],
        "budgets": budgets,
    }


async def burst(router: Any, clients: list[str], count: int) -> tuple[list[Decimal], list[BudgetExceeded]]:
    served: list[Decimal] = []
    refused: list[BudgetExceeded] = []

    async def one(i: int) -> None:
        try:
            response = await router.route(chat("burst"), client=clients[i % len(clients)])
        except BudgetExceeded as exc:
            refused.append(exc)
        else:
            served.append(response.metadata.cost)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    await trio.testing.wait_all_tasks_blocked()  # charges are tells: let the budget actor apply them
    return served, refused


async def test_a_thousand_concurrent_requests_from_one_client_are_served_exactly_as_its_budget_admits(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sim_env(KEYS, sim_defaults=SLOW, config=clients_config(7)) as env:
        served, refused = await burst(env.router, ["acme"], 1000)
        assert len(served) == 7 and len(refused) == 993
        assert {exc.budget for exc in refused} == {"client:acme"}
        acme = env.router.budgets()["client:acme"]
        assert Decimal(acme["reserved"]) == 0  # every hold released or charged
        assert Decimal(acme["spent"]) == sum(served) <= Decimal(acme["limit"])
        # No phantom block: what the budget has left is exactly what it admits now.
        room = Decimal(acme["remaining"])
        more, _ = await burst(env.router, ["acme"], 20)
        assert len(more) == int(room // worst_case())
        await trio.sleep(3600)  # the next calendar hour: a fresh budget admits 7 again
        again, _ = await burst(env.router, ["acme"], 100)
        assert len(again) == 7


async def test_a_team_shared_by_five_clients_admits_exactly_its_budget(autojump_clock: trio.abc.Clock) -> None:
    async with sim_env(KEYS, sim_defaults=SLOW, config=clients_config(11)) as env:
        members = [f"member{i}" for i in range(5)]
        served, refused = await burst(env.router, members, 1000)
        assert len(served) == 11 and len(refused) == 989
        assert {exc.budget for exc in refused} == {"team:search"}
        team = env.router.budgets()["team:search"]
        assert Decimal(team["reserved"]) == 0 and Decimal(team["spent"]) == sum(served)


async def test_the_first_burst_of_a_client_never_seen_before_meets_the_default_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    default = {"limit": str(worst_case() * 4), "period": "day"}
    async with sim_env(KEYS, sim_defaults=SLOW, config={"budgets": {"client_default": default}}) as env:
        served, refused = await burst(env.router, ["newcomer"], 1000)
        assert len(served) == 4 and {exc.budget for exc in refused} == {"client:newcomer"}
        other, _ = await burst(env.router, ["another"], 10)  # each new client gets a budget of its own
        assert len(other) == 4
        shown = env.router.budgets()
        assert shown["client:newcomer"]["limit"] == shown["client:another"]["limit"] == default["limit"]


async def test_a_soft_team_budget_serves_past_its_limit_and_says_so(autojump_clock: trio.abc.Clock) -> None:
    config = clients_config(3)
    config["teams"][0]["budget"]["mode"] = "soft"
    async with sim_env(KEYS, sim_defaults=SLOW, config=config) as env:
        said: list[BudgetSoftExceededEvent] = []
        env.router.events.observe(BudgetSoftExceededEvent, said.append)
        served, refused = await burst(env.router, ["member0", "member1"], 10)
        assert len(served) == 10 and not refused
        assert len(said) == 7  # the first 3 fit; each later one was served and reported
        assert {(e.exceeded.budget, e.client) for e in said} <= {("team:search", "member0"), ("team:search", "member1")}
        team = env.router.budgets()["team:search"]
        assert team["mode"] == "soft" and Decimal(team["spent"]) > Decimal(team["limit"])


async def test_a_monthly_budget_resets_at_the_calendar_month_boundary_in_its_timezone(
    autojump_clock: trio.abc.Clock,
) -> None:
    # trio time 0 is 23:59 on 31 January in Paris: the month changes a minute later.
    start = dt.datetime(2027, 1, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp()
    events = EventBus(wall_offset=start - trio.current_time())
    config = {
        "clients": [{"id": "acme", "budget": {"limit": str(worst_case()), "period": "month"}}],
        "budgets": {"timezone": "Europe/Paris"},
    }
    async with sim_env(KEYS, config=config, events=events) as env:
        await env.router.route(chat("burst"), client="acme")
        with pytest.raises(BudgetExceeded, match="client:acme"):
            await env.router.route(chat("burst"), client="acme")
        acme = env.router.budgets()["client:acme"]
        assert (acme["period_start"], acme["period_end"]) == ("2026-12-31T23:00:00.000Z", "2027-01-31T23:00:00.000Z")
        await trio.sleep(60)
        response = await env.router.route(chat("burst"), client="acme")
        assert response.metadata is not None and response.metadata.client == "acme"
        await trio.testing.wait_all_tasks_blocked()
        acme = env.router.budgets()["client:acme"]
        assert acme["period_start"] == "2027-01-31T23:00:00.000Z" and Decimal(acme["spent"]) == response.metadata.cost


async def test_a_client_rpm_admits_exactly_that_many_requests_per_sliding_minute(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = {"clients": [{"id": "acme", "rpm": 5}], "routing": {"wait_for_reset": False}}
    async with sim_env(KEYS, sim_defaults=SLOW, config=config) as env:
        limited: list[ClientRateLimited] = []

        async def one() -> None:
            try:
                await env.router.route(chat("rpm"), client="acme")
            except ClientRateLimited as exc:
                limited.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert len(limited) == 45 and {exc.scope for exc in limited} == {"client:acme"}
        assert all(exc.retry_after == pytest.approx(60.0) for exc in limited)
        assert "rpm" in str(limited[0])
        await trio.sleep(59)
        with pytest.raises(ClientRateLimited):
            await env.router.route(chat("still the same minute"), client="acme")
        await trio.sleep(1.5)
        await env.router.route(chat("the window slid"), client="acme")


async def test_a_client_waits_for_its_rpm_window_within_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    config = {"clients": [{"id": "acme", "rpm": 1}]}
    async with sim_env(KEYS, config=config) as env:
        await env.router.route(chat("first"), client="acme")
        t0 = trio.current_time()
        with trio.fail_after(120):
            await env.router.route(chat("second"), client="acme")
        assert 59 <= trio.current_time() - t0 <= 61


async def test_a_client_is_held_to_its_models_and_routes_with_its_default_objective(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = {"clients": [{"id": "acme", "models": ["gpt-4o-mini"], "objective": "cost"}]}
    async with sim_env(KEYS, config=config) as env:
        with pytest.raises(InvalidRequest, match="client acme may not use model 'gpt-4o'"):
            await env.router.route(chat("big", model="gpt-4o"), client="acme")
        response = await env.router.route(chat("small"), client="acme")
        assert response.metadata is not None and response.metadata.decision is not None
        assert response.metadata.decision.objective == "cost"


async def test_budget_status_shows_the_burn_rate_and_when_the_budget_runs_out(autojump_clock: trio.abc.Clock) -> None:
    start = dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
    events = EventBus(wall_offset=start - trio.current_time())
    config = {"clients": [{"id": "acme", "budget": {"limit": str(worst_case() * 100), "period": "day"}}]}
    async with sim_env(KEYS, config=config, events=events) as env:
        assert env.router.get_budget_status("client:nobody") is None
        for _ in range(24):  # one request every 5 minutes for two hours
            await env.router.route(chat("burst"), client="acme")
            await trio.sleep(300)
        status = env.router.get_budget_status("client:acme")
        assert status is not None
        assert (status["period_start"], status["period_end"]) == (
            "2027-03-01T00:00:00.000Z",
            "2027-03-02T00:00:00.000Z",
        )
        spent, limit = Decimal(status["spent"]), Decimal(status["limit"])
        assert Decimal(status["remaining"]) == limit - spent and Decimal(status["reserved"]) == 0
        assert Decimal(status["burn_rate_per_hour"]) == pytest.approx(spent / 2, rel=Decimal("0.01"))
        # 100 worst cases at ~12 actual requests an hour: gone well before midnight, and it says when.
        assert status["projected_exhaustion"] is not None and status["projected_exhaustion"] < status["period_end"]
        assert 0 < status["projection_confidence"] <= 1


async def test_state_shows_what_answers_really_used_against_what_their_estimates_held(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sim_env(KEYS, config={"clients": [{"id": "acme"}]}) as env:
        for _ in range(5):
            await env.router.route(chat("burst"), client="acme")
        state = env.router.get_state_summary()
        learned = state["reconcile"]["openai/gpt-4o-mini"]
        assert learned["samples"] == 5 and 0 < learned["output_ratio"] < 1 and learned["input_ratio"] > 0
        assert state["clients"] == ["acme"] and state["policies"] == []
