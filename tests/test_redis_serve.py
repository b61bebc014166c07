"""Real `serve` processes on one Redis: a killed instance's holds come back after its TTL, not its leases,
and an instance restarted with the same id hands back what its previous life held, at once.

The simulator answers slowly (1.5 s), so a burst is still in flight, held in Redis, when the instance is
killed with SIGKILL: nothing of it runs to settle or release. Each hold's lease (the request deadline
plus graces, ~20 s here) would free it in the end; the instance TTL (1.5 s) frees it first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim

__all__ = ["redis_server", "redis_url"]

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
TOKEN = "sk-client-redis"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _toml(sim_url: str, redis: str, instance: str, ttl: float) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
client_tokens_env = "TEST_CLIENT_TOKEN"
request_deadline = 10.0
grace_period = 1.0

[[providers]]
id = "sim"
kind = "openai"
base_url = "{sim_url}/v1"
models = ["gpt-4o-mini"]

[[keys]]
id = "k1"
provider = "sim"
secret_env = "TEST_KEY"

[budgets.global]
limit = "5"
period = "day"

[store]
kind = "redis"
url = "{redis}"
instance_id = "{instance}"
instance_ttl = {ttl}
redis_deadline = 1.0  # a loaded CI machine can be slower than the default 0.25 s

[debug]
enabled = false
"""


@asynccontextmanager
async def serve(tmp_path: Path, name: str, text: str) -> AsyncIterator[tuple[trio.Process, str]]:
    config = tmp_path / f"{name}.toml"
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TEST_CLIENT_TOKEN": TOKEN, "TEST_KEY": "sk-sim-kill-1"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(30):
        while b"listening on " not in buffer or not buffer.split(b"listening on ", 1)[1].count(b" "):
            chunk = await process.stdout.receive_some()
            assert chunk, "serve exited before listening"
            buffer += chunk
    url = buffer.split(b"listening on ", 1)[1].split()[0].decode()
    try:
        yield process, url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        with trio.move_on_after(10) as cs:
            cs.shield = True
            await process.wait()


async def burst(nursery: trio.Nursery, url: str, n: int) -> None:
    async def one(http: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):  # its instance is killed mid-request: the scenario
            await http.post(f"{url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {TOKEN}"})

    http = httpx.AsyncClient(timeout=30)
    for _ in range(n):
        nursery.start_soon(one, http)


async def held(server: RedisServer, n: int) -> None:
    client = server.client()
    with trio.fail_after(10):
        while client.hlen("akr:ba:global") < n or client.zcard("akr:f:k1") < n:
            await trio.sleep(0.02)


async def test_a_killed_instance_holds_nothing_after_its_ttl(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"latency_ms": 1500}})
        async with (
            serve(tmp_path, "a", _toml(sim_url, redis_url, "a", 1.5)) as (a, a_url),
            serve(tmp_path, "b", _toml(sim_url, redis_url, "b", 1.5)),
        ):
            async with trio.open_nursery() as clients:
                await burst(clients, a_url, 5)
                await held(redis_server, 5)
                a.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                assert int(client.hget("akr:b:global", "res") or 0) > 0  # still held, for now
                with trio.fail_after(5):  # b's heartbeat finds a silent past its TTL and reclaims
                    while client.hlen("akr:ba:global") or client.zcard("akr:f:k1"):
                        await trio.sleep(0.05)
                clients.cancel_scope.cancel()
            freed_after = trio.current_time() - killed_at
            assert int(client.hget("akr:b:global", "res") or 0) == 0
            assert 1.0 < freed_after < 4.0  # its TTL (1.5 s) plus a heartbeat, long before any lease (~20 s)
            assert client.zrange("akr:inst", 0, -1) == [b"b"]
        nursery.cancel_scope.cancel()


async def test_an_instance_restarted_with_its_id_does_not_count_its_old_holds(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"latency_ms": 1500}})
        text = _toml(sim_url, redis_url, "a", 60.0)  # a TTL far away: only the restart can free them soon
        async with serve(tmp_path, "a", text) as (a, a_url), trio.open_nursery() as clients:
            await burst(clients, a_url, 4)
            await held(redis_server, 4)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            clients.cancel_scope.cancel()
        assert client.hlen("akr:ba:global") == 4
        async with serve(tmp_path, "a", text):
            assert client.hlen("akr:ba:global") == 0 and client.zcard("akr:f:k1") == 0
            assert int(client.hget("akr:b:global", "res") or 0) == 0
        nursery.cancel_scope.cancel()


async def test_health_and_metrics_say_when_redis_is_away(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with serve(tmp_path, "a", _toml(sim_url, redis_url, "a", 2.0)) as (_, url), httpx.AsyncClient() as http:
            ready = (await http.get(f"{url}/health/ready")).json()
            assert ready["status"] == "ready" and ready["store"]["up"] and ready["store"]["live_instances"] == 1
            assert "apikeyrouter_store_up 1.0" in (await http.get(f"{url}/metrics")).text
            redis_server.stop()
            with trio.fail_after(5):  # the next heartbeat (every TTL/4) finds it gone
                # (a failed store write can say "degraded" first: wait for the link's own view)
                while (ready := (await http.get(f"{url}/health/ready")).json())["store"]["up"]:
                    await trio.sleep(0.05)
            assert ready["status"] == "degraded"
            assert ready["store"]["mode"] == "local share (1/1 of each limit)"
            assert "apikeyrouter_store_up 0.0" in (await http.get(f"{url}/metrics")).text
            chat = await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH)
            assert chat.status_code == 429 and "hard budgets fail closed" in chat.text  # [budgets.global]
            redis_server.start()
            with trio.fail_after(5):
                while (await http.get(f"{url}/health/ready")).json()["status"] != "ready":
                    await trio.sleep(0.05)
            chat = await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH)
            assert chat.status_code == 200
        nursery.cancel_scope.cancel()
