"""A client's and a team's rpm windows on the SQLite store across a restart: a router started again on the
same file (a new process: its trio clock starts anew, its wall offset differs) refuses the client whose
minute was full, until that minute has slid by on the wall clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import ClientRateLimited
from apikeyrouter.observe import EventBus
from tests.routing_env import chat
from tests.sim_transport import sim_env
from tests.test_clients import KEYS


def config(db: Path) -> dict[str, Any]:
    return {
        "store": {"kind": "sqlite", "path": str(db)},
        "routing": {"wait_for_reset": False},
        "teams": [{"id": "search", "rpm": 5}],
        "clients": [{"id": "acme", "rpm": 3}, {"id": "beta", "team": "search"}],
    }


def bus_at(second: float) -> EventBus:
    """An event bus whose wall clock reads 2027-03-01 10:00 UTC plus `second` now: a process started then."""
    wall = dt.datetime(2027, 3, 1, 10, tzinfo=dt.UTC).timestamp() + second
    return EventBus(wall_offset=wall - trio.current_time())


async def test_a_restarted_router_refuses_the_client_whose_minute_was_full_until_it_slides(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "state.db"
    async with sim_env(KEYS, config=config(db), events=bus_at(0)) as env:
        for _ in range(3):
            await env.router.route(chat("burst"), client="acme")
        for _ in range(5):
            await env.router.route(chat("burst"), client="beta")
        await trio.testing.wait_all_tasks_blocked()  # the settlements are tells: let the budget actor apply them

    # A new process 30 s later on the wall clock (its trio clock has hardly moved): the minute is still full.
    async with sim_env(KEYS, config=config(db), events=bus_at(30)) as env:
        with pytest.raises(ClientRateLimited) as limited:
            await env.router.route(chat("again"), client="acme")
        assert limited.value.scope == "client:acme"
        # Room again a minute after the first of the three, at 10:01:00 wall: 30 s from this start.
        assert limited.value.retry_after is not None and 29 < limited.value.retry_after <= 30
        with pytest.raises(ClientRateLimited, match="team:search"):
            await env.router.route(chat("again"), client="beta")

    # Another start, 61 s after the first requests: the window has slid by, the client is served.
    async with sim_env(KEYS, config=config(db), events=bus_at(61)) as env:
        await env.router.route(chat("later"), client="acme")
        await env.router.route(chat("later"), client="beta")
