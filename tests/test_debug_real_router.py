"""The debug channel in front of the real embedded router (the other debug tests use a fake)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import trio
from click.testing import CliRunner

from apikeyrouter.cli import main
from apikeyrouter.debug import open_debug_channel
from apikeyrouter.debug.client import call, subscribe
from apikeyrouter.messages.key import InjectCrash
from tests.routing_env import chat, routing_env

PREMIUM = {"metadata": {"quality": "premium"}}


async def test_inspect_data_matches_the_actors_snapshots(tmp_path: Path) -> None:
    socket = str(tmp_path / "debug.sock")
    async with (
        routing_env(
            [("tight", "sk-sim-tight", PREMIUM), ("good", "sk-sim-good", {})],
            sim_keys=[{"key": "sk-sim-tight", "rpm": 1}],
            config={"routing": {"objective": "quality"}},
        ) as env,
        open_debug_channel(env.router, socket),
    ):
        assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600
        async with httpx.AsyncClient(base_url=env.base_url) as http:  # spend tight's quota behind the router
            await http.post("/chat/completions", headers={"authorization": "Bearer sk-sim-tight"}, json=chat("x"))
        response = await env.router.route(chat("one"))  # tight answers 429 -> throttled; good serves
        assert response.metadata is not None and response.metadata.key_used == "good"

        keys = {k["id"]: k for k in await call(socket, "keys")}
        fields = ("id", "provider", "fingerprint", "lifecycle", "lifecycle_until", "capacity", "breaker", "in_flight")
        assert {k: {f: v[f] for f in fields} for k, v in keys.items()} == {
            k["id"]: {f: k[f] for f in fields} for k in env.router.keys()
        }  # the channel shows what the key actors published
        tight = keys["tight"]
        assert tight["lifecycle"] == "throttled" and tight["lifecycle_until_wall"]
        assert "sk-sim-tight" not in str(keys)

        events: list[dict[str, object]] = []

        async def follow() -> None:
            async for event in subscribe(socket, ["supervisor"]):
                events.append(event)
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(0.1)
            await env.router.key_ref("tight").tell(InjectCrash("debug channel test"))
        assert events and "debug channel test" in str(events[0])

        tree = await call(socket, "tree")
        providers = next(c for c in tree["children"] if c["name"] == "providers")
        keys_sup = providers["children"][0]["children"][1]
        crashed = next(c for c in keys_sup["children"] if c["name"] == "key:tight")
        assert crashed["restarts"] == 1 and "debug channel test" in (crashed["last_crash"] or "")
        decisions = await call(socket, "decisions", limit=5)
        assert decisions[-1]["chosen"] == "good" and "tight" in decisions[-1]["explanation"]


async def test_inspect_policies_shows_the_live_set_its_changes_and_the_budgets(tmp_path: Path) -> None:
    socket = str(tmp_path / "debug.sock")
    config = {"clients": [{"id": "acme", "budget": {"limit": "1", "period": "day", "mode": "soft"}}]}
    policy = {"id": "acme-eu", "scope": "client:acme", "kind": "eligibility",
              "effect": {"require_key_metadata": {"region": "eu"}}, "description": "EU only"}  # fmt: skip
    async with (
        routing_env([("eu", "sk-sim-eu", {"metadata": {"region": "eu"}})], config=config) as env,
        open_debug_channel(env.router, socket),
    ):
        await env.router.configure_policy(policy, who="ops")
        doc = await call(socket, "policies")
        assert [p["id"] for p in doc["policies"]] == ["acme-eu"]
        assert [(a["who"], a["action"]) for a in doc["audit"]] == [("ops", "configure")]
        assert doc["budgets"]["client:acme"]["mode"] == "soft"
        shown = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, ["inspect", "--socket", socket, "policies"])
        )
        assert shown.exit_code == 0, shown.output
        assert "acme-eu  client:acme  eligibility  EU only" in shown.stdout
        assert "client:acme  soft  spent 0 of 1, 1 left" in shown.stdout
