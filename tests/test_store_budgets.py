"""Calendar, client and soft budgets on the SQLite store across a restart: a router stopped and started again
on the same file (a new process: its trio clock starts anew, its wall offset differs) still counts what was
spent in the same calendar period, and starts afresh when the wall clock says the period has turned."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import BudgetExceeded
from apikeyrouter.observe import EventBus
from tests.routing_env import chat
from tests.sim_transport import sim_env
from tests.test_clients import KEYS, worst_case


def config(db: Path) -> dict[str, Any]:
    limit = str(worst_case())  # one request a day fits
    return {
        "store": {"kind": "sqlite", "path": str(db)},
        "budgets": {
            "global": {"limit": "100", "period": "day"},
            "client_default": {"limit": limit, "period": "day"},
        },
        "clients": [{"id": "soft", "budget": {"limit": limit, "period": "day", "mode": "soft"}}],
    }


def bus_at(year: int, month: int, day: int, hour: int) -> EventBus:
    """An event bus whose wall clock reads that UTC hour now: a process started at that moment."""
    wall = dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()
    return EventBus(wall_offset=wall - trio.current_time())


async def spend(router: Any, client: str, n: int) -> None:
    for _ in range(n):
        await router.route(chat("burst"), client=client)
    await trio.testing.wait_all_tasks_blocked()  # charges are tells: let the budget actor apply them


async def test_a_day_budget_and_client_budgets_keep_their_spend_across_a_restart_in_the_same_day(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "state.db"
    async with sim_env(KEYS, config=config(db), events=bus_at(2027, 3, 1, 10)) as env:
        await spend(env.router, "newbie", 1)  # a client never configured: its budget comes from the template
        await spend(env.router, "soft", 3)  # past its limit: soft serves it
        before = env.router.budgets()
    assert Decimal(before["client:newbie"]["spent"]) > 0
    assert Decimal(before["client:soft"]["spent"]) > Decimal(before["client:soft"]["limit"])

    await trio.sleep(5)  # a new process two hours later (wall), on a trio clock that has not moved much
    async with sim_env(KEYS, config=config(db), events=bus_at(2027, 3, 1, 12)) as env:
        after = env.router.budgets()
        for bid in ("global", "client:newbie", "client:soft"):
            assert after[bid]["spent"] == before[bid]["spent"], bid
            assert after[bid]["period_start"] == "2027-03-01T00:00:00.000Z", (bid, after[bid])
            assert after[bid]["period_end"] == "2027-03-02T00:00:00.000Z", (bid, after[bid])
        assert after["client:newbie"]["mode"] == "hard" and after["client:soft"]["mode"] == "soft"
        with pytest.raises(BudgetExceeded, match="client:newbie"):
            await spend(env.router, "newbie", 1)  # the restored spend still counts: no room for a second
        await spend(env.router, "soft", 1)  # soft still serves
        total = env.router.budgets()["global"]
        assert Decimal(total["spent"]) > Decimal(before["global"]["spent"])


async def test_a_restart_on_the_next_day_starts_the_day_budgets_afresh(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "state.db"
    async with sim_env(KEYS, config=config(db), events=bus_at(2027, 3, 1, 23)) as env:
        await spend(env.router, "newbie", 1)
        with pytest.raises(BudgetExceeded, match="client:newbie"):
            await spend(env.router, "newbie", 1)
    async with sim_env(KEYS, config=config(db), events=bus_at(2027, 3, 2, 1)) as env:
        after = env.router.budgets()
        assert after["client:newbie"]["period_start"] == "2027-03-02T00:00:00.000Z"
        assert Decimal(after["client:newbie"]["spent"]) == 0 and Decimal(after["global"]["spent"]) == 0
        await spend(env.router, "newbie", 1)  # a new day: the whole budget again


async def test_a_restart_with_a_budget_taken_out_of_the_config_no_longer_refuses_on_the_stored_one(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "state.db"
    tight = config(db)
    tight["budgets"]["global"] = {"limit": str(worst_case()), "period": "day"}
    async with sim_env(KEYS, config=tight, events=bus_at(2027, 3, 1, 10)) as env:
        await spend(env.router, "acme", 1)
        with pytest.raises(BudgetExceeded, match="budget global"):
            await spend(env.router, "other", 1)
    loose = config(db)
    del loose["budgets"]["global"]  # the operator took the global budget out, and restarted
    async with sim_env(KEYS, config=loose, events=bus_at(2027, 3, 1, 11)) as env:
        assert "global" not in env.router.budgets()
        await spend(env.router, "other", 1)  # as a reload would: no budget configured, no limit


async def test_a_restart_with_a_raised_client_default_gives_clients_seen_before_the_new_limit(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "state.db"
    async with sim_env(KEYS, config=config(db), events=bus_at(2027, 3, 1, 10)) as env:
        await spend(env.router, "newbie", 1)
        with pytest.raises(BudgetExceeded, match="client:newbie"):
            await spend(env.router, "newbie", 1)
        spent = env.router.budgets()["client:newbie"]["spent"]
    raised = config(db)
    raised["budgets"]["client_default"] = {"limit": str(worst_case() * 10), "period": "day", "mode": "soft"}
    async with sim_env(KEYS, config=raised, events=bus_at(2027, 3, 1, 11)) as env:
        newbie = env.router.budgets()["client:newbie"]
        assert (newbie["limit"], newbie["mode"], newbie["spent"]) == (str(worst_case() * 10), "soft", spent)
        await spend(env.router, "newbie", 2)  # the raised limit, with what was spent still counted


async def test_a_budget_given_to_register_key_keeps_its_spend_across_a_restart(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    # Keys the library registers come after the budget actor has started on the stored ledger.
    keys = [("k1", "sk-sim-1", {"budget": str(worst_case())})]
    store = {"store": {"kind": "sqlite", "path": str(tmp_path / "state.db")}}
    async with sim_env(keys, config=store, events=bus_at(2027, 3, 1, 10)) as env:
        await spend(env.router, "acme", 1)
        spent = env.router.budgets()["key:k1"]["spent"]
        assert Decimal(spent) > 0
    async with sim_env(keys, config=store, events=bus_at(2027, 3, 1, 11)) as env:
        assert env.router.budgets()["key:k1"]["spent"] == spent
        with pytest.raises(BudgetExceeded, match="key:k1"):
            await spend(env.router, "acme", 1)
