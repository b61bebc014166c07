"""Review findings against `apikeyrouter serve` as a real process."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from tests.serve_env import router_toml, serve_env


async def test_a_reload_that_apply_config_refuses_does_not_kill_the_server(tmp_path: Path) -> None:
    # standalone.reload() catches only ConfigError from load_config; anything apply_config raises
    # (here InvalidRequest: rotating a revoked key) escapes into the process nursery and the server dies.
    async with (
        serve_env(
            tmp_path,
            [("one", "K_1", ""), ("two", "K_2", "")],
            secrets={"K_1": "sk-sim-1", "K_2": "sk-sim-2", "K_9": "sk-sim-9"},
        ) as served,
        httpx.AsyncClient() as http,
    ):
        r = await http.delete(f"{served.url}/keys/one", headers=served.admin_headers)
        assert r.status_code == 200
        # The operator replaces the revoked key's material in the config and reloads.
        served.config_path.write_text(router_toml(served.sim_url, [("one", "K_9", ""), ("two", "K_2", "")]))
        served.signal(signal.SIGHUP)
        await trio.sleep(1.5)
        assert served.process.returncode is None, served.stderr.decode()[-1500:]
        r = await http.get(f"{served.url}/health")
        assert r.status_code == 200


async def test_a_reload_applies_new_client_tokens(tmp_path: Path) -> None:
    # ProxyApp keeps the client/admin tokens it was built with; a SIGHUP that removes a leaked client
    # token logs "config_reloaded" but the old token keeps working.
    async with serve_env(tmp_path, [("one", "K_1", "")], secrets={"K_1": "sk-sim-1"}) as served:
        text = router_toml(served.sim_url, [("one", "K_1", "")]).replace(
            'client_tokens_env = "TEST_CLIENT_TOKEN"', 'client_tokens = ["sk-client-new"]'
        )
        served.config_path.write_text(text)
        served.signal(signal.SIGHUP)
        with trio.fail_after(5):
            while b"config_reloaded" not in served.stderr:
                await trio.sleep(0.05)
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{served.url}/v1/chat/completions",
                headers=served.client_headers,  # the old token
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert r.status_code == 401, f"old client token still accepted after reload: {r.status_code}"


async def test_a_reload_applies_a_new_body_limit_and_warns_of_what_needs_a_restart(tmp_path: Path) -> None:
    # docs/config.md lists what a reload does not change; `max_body_bytes` and `request_deadline` are not
    # among them, yet the app kept the values it was built with (a lowered body limit never applied).
    async with serve_env(tmp_path, [("one", "K_1", "")], secrets={"K_1": "sk-sim-1"}) as served:
        text = router_toml(served.sim_url, [("one", "K_1", "")]).replace(
            "request_deadline = 2.0", "request_deadline = 2.0\nmax_body_bytes = 200\ndecision_retention = 5"
        )
        served.config_path.write_text(text)
        served.signal(signal.SIGHUP)
        with trio.fail_after(5):
            while b"config_reloaded" not in served.stderr:
                await trio.sleep(0.05)
        assert b"server.decision_retention: changes need a restart" in served.stderr
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{served.url}/v1/chat/completions",
                headers=served.client_headers,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * 100}]},
            )
        assert r.status_code == 413, r.text
