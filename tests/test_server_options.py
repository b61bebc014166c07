"""`[server]` options the docs promise reach the running proxy: `metrics_require_admin`, `stream_idle_timeout`."""

from __future__ import annotations

import json
import tomllib
from functools import partial

import httpx
import pytest
import trio

from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError
from apikeyrouter.sim import SimServer, parse_sim_config
from apikeyrouter.standalone import Started, run_standalone

ADMIN = "admin-test"


def config_text(sim_url: str, server: str) -> str:
    return f"""
[server]
port = 0
admin_token = "{ADMIN}"
{server}
[debug]
enabled = false
[[providers]]
id = "sim"
kind = "openai"
base_url = "{sim_url}/v1"
[[keys]]
id = "slow"
provider = "sim"
secret_env = "SLOW_KEY"
"""


async def test_metrics_behind_the_admin_token_and_a_stalled_stream_is_cut() -> None:
    # The simulator waits 1.5 s between chunks; the proxy allows 0.3 s of silence.
    sim = SimServer(parse_sim_config({"keys": [{"key": "sk-sim-slow", "chunk_delay_ms": 1500}]}))
    async with trio.open_nursery() as nursery:
        sim_port = await nursery.start(sim.serve, "127.0.0.1", 0)
        text = config_text(f"http://127.0.0.1:{sim_port}", "metrics_require_admin = true\nstream_idle_timeout = 0.3")
        config = parse_config(tomllib.loads(text), {"SLOW_KEY": "sk-sim-slow"})
        stop = trio.Event()
        started: Started = await nursery.start(partial(run_standalone, config, handle_signals=False, stop=stop))
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{started.url}/metrics")).status_code == 401
            admin = {"authorization": f"Bearer {ADMIN}"}
            assert (await http.get(f"{started.url}/metrics", headers=admin)).status_code == 200

            body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            with trio.fail_after(5):
                response = await http.post(f"{started.url}/v1/chat/completions", json=body)
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "stream_idle"
        assert events[-1]["error"]["message"] == "the upstream sent nothing for 0.3s"
        stop.set()
        nursery.cancel_scope.cancel(reason="test over: the simulator goes too")


def test_the_defaults_keep_metrics_open_and_streams_patient() -> None:
    server = parse_config({}).server
    assert (server.metrics_require_admin, server.stream_idle_timeout) == (False, 120.0)


def test_a_stream_idle_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"stream_idle_timeout": 0}})
    assert info.value.errors == ("must be > 0 (got 0.0) @ config.server.stream_idle_timeout",)
