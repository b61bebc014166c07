"""The store's history from outside: `GET /state/query` (admin), the debug channel's `history` op and
`apikeyrouter inspect transitions KEY --since`, against a real router whose key was throttled by a 429."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner

from apikeyrouter.cli import main
from apikeyrouter.debug import open_debug_channel
from apikeyrouter.debug.client import call
from apikeyrouter.errors import DebugRequestError
from tests.debug_fake import short_socket_dir
from tests.proxy_fakes import ADMIN_TOKEN, auth, running_proxy
from tests.routing_env import chat
from tests.sim_transport import sim_env
from tests.test_proxy_http import assert_openai_error

ADMIN = auth(ADMIN_TOKEN)
KEYS = [("hot", "sk-sim-hot", {"metadata": {"quality": "premium"}}), ("good", "sk-sim-good", {})]
SIM_KEYS = [{"key": "sk-sim-hot", "tpm": 1, "window_s": 3600}]  # no request fits: a 429, Retry-After 1 h


def throttled_router(tmp_path: Path) -> Any:
    config = {"routing": {"objective": "quality"}, "store": {"kind": "sqlite", "path": str(tmp_path / "s.db")}}
    return sim_env(KEYS, sim_keys=SIM_KEYS, config=config)


async def test_state_query_answers_by_trail_key_outcome_and_time(tmp_path: Path) -> None:
    async with throttled_router(tmp_path) as env:
        for i in range(3):
            response = await env.router.route(chat(f"request {i}"), client="acme")
            assert response.metadata is not None and response.metadata.key_used == "good"
        async with running_proxy(env.router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:

            async def query(params: str) -> Any:
                got = await http.get(f"/state/query?{params}", headers=ADMIN)
                assert got.status_code == 200, got.text
                return got.json()["data"]

            (move,) = await query("trail=transitions&key=hot&since=1h")
            assert (move["from_state"], move["to_state"], move["cause"]) == ("active", "throttled", "failure")
            assert move["reason"].startswith("rate_limited") and move["until_wall"].endswith("Z")
            assert await query("trail=transitions&key=good") == []
            assert await query("trail=transitions&key=hot&until=2001-01-01T00:00:00Z") == []
            refused = await query("trail=decisions&outcome=rate_limited")
            assert [(d["key"], d["attempt"], d["client"]) for d in refused] == [("hot", 1, "acme")]
            served = await query("trail=decisions&key=good&model=gpt-4o-mini&client=acme")
            assert len(served) == 3 and {d["outcome"] for d in served} == {"ok"}
            assert len(await query("trail=decisions&limit=2")) == 2

            anonymous = await http.get("/state/query?trail=transitions")
            assert_openai_error(anonymous, 401, "invalid_admin_token")
            for params, param in [
                ("trail=everything", "trail"),
                ("trail=transitions&since=yesterday", "since"),
                ("trail=transitions&limit=0", "limit"),
                ("trail=transitions&colour=blue", "colour"),
                ("key=a&key=b", "key"),
            ]:
                bad = await http.get(f"/state/query?{params}", headers=ADMIN)
                error = assert_openai_error(bad, 400, bad.json()["error"]["code"])
                assert error["param"] == param, (params, error)


async def test_inspect_transitions_reads_the_store_through_the_debug_channel(tmp_path: Path) -> None:
    path = os.path.join(short_socket_dir(), "d.sock")
    async with throttled_router(tmp_path) as env, open_debug_channel(env.router, path):
        await env.router.route(chat("the one that throttles hot"))
        rows = await call(path, "history", trail="transitions", key="hot", since="1h")
        assert [(r["from_state"], r["to_state"]) for r in rows] == [("active", "throttled")]
        with pytest.raises(DebugRequestError) as info:
            await call(path, "history", trail="transitions", since="a while ago")
        assert info.value.code == "bad_argument" and "since" in str(info.value)

        def inspect(*args: str) -> Any:
            return CliRunner().invoke(main, ["inspect", *args, "--socket", path], env={"COLUMNS": "160"})

        shown = await trio.to_thread.run_sync(inspect, "transitions", "hot", "--since", "15m")
        assert shown.exit_code == 0, shown.output
        assert "active -> throttled until " in shown.output and "(failure) rate_limited" in shown.output
        as_json = await trio.to_thread.run_sync(inspect, "transitions", "hot", "--json")
        assert json.loads(as_json.output)["transitions"][0]["to_state"] == "throttled"
        none = await trio.to_thread.run_sync(inspect, "transitions", "good")
        assert "no transitions of good in the store" in none.output


async def test_budget_history_has_a_row_for_every_hold_and_how_it_ended(tmp_path: Path) -> None:
    config = {
        "routing": {"objective": "quality"},
        "store": {"kind": "sqlite", "path": str(tmp_path / "s.db")},
        "budgets": {"global": {"limit": "100", "period": "month"}},
    }
    async with sim_env(KEYS, sim_keys=SIM_KEYS, config=config) as env:
        first = await env.router.route(chat("hot answers 429, good serves it"), client="acme")
        await env.router.route(chat("hot is benched now: good at once"), client="acme")
        async with running_proxy(env.router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:

            async def query(params: str) -> Any:
                got = await http.get(f"/state/query?{params}", headers=ADMIN)
                assert got.status_code == 200, got.text
                return got.json()["data"]

            rows = list(reversed(await query("trail=budgets&budget=global&since=1h")))  # oldest first
            assert [r["event"] for r in rows] == ["held", "released", "held", "charged", "held", "charged"]
            assert {r["budget"] for r in rows} == {"global"} and all(r["at_wall"].endswith("Z") for r in rows)
            held, released, *_ = rows
            assert released["hold_id"] == held["hold_id"] and released["amount"] == held["amount"]
            assert Decimal(held["amount"]) > 0  # the worst case it held
            charged = rows[3]
            assert charged["hold_id"] == rows[2]["hold_id"]
            assert first.metadata is not None and Decimal(charged["amount"]) == first.metadata.cost
            assert await query("trail=budgets&budget=client:nobody") == []
            assert await query("trail=budgets&budget=global&until=2001-01-01T00:00:00Z") == []
            assert len(await query("trail=budgets&limit=2")) == 2
            text = json.dumps(rows)
            assert "sk-sim-hot" not in text and "sk-sim-good" not in text
