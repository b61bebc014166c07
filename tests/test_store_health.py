"""`/health/ready` and `/metrics` say when the store is failing: `serve` on SQLite whose file another process
holds locked (every write fails until it lets go), and `serve` on Redis with the server stopped."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import trio

from tests.redis_server import RedisServer, redis_server, redis_url
from tests.serve_env import serve_env
from tests.sim_helpers import start_sim
from tests.test_redis_serve import AUTH, CHAT, _toml, serve

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest

KEYS = [("good", "K_GOOD", "")]
SECRETS = {"K_GOOD": "sk-sim-good"}
WRITE_FAILURES = "apikeyrouter_store_write_failures_total"


def metric(text: str, name: str, kind: str) -> float:
    found = re.search(rf'^{name}{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def test_a_locked_sqlite_file_makes_ready_degraded_and_counts_the_failed_writes(tmp_path: Path) -> None:
    db = tmp_path / "apikeyrouter.db"  # serve's default: next to its config file
    async with serve_env(tmp_path, KEYS, secrets=SECRETS) as served, httpx.AsyncClient(timeout=30) as http:
        ready = (await http.get(f"{served.url}/health/ready")).json()
        assert ready == {"status": "ready"}
        text = (await http.get(f"{served.url}/metrics")).text
        assert metric(text, "apikeyrouter_store_failing", "sqlite") == 0.0
        assert metric(text, "apikeyrouter_store_write_failures_total", "sqlite") == 0.0

        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process takes the write lock and keeps it
        try:
            chat = await http.post(f"{served.url}/v1/chat/completions", json=CHAT, headers=served.client_headers)
            assert chat.status_code == 200  # the store is off the request path: serving goes on
            with trio.fail_after(25):  # sqlite3 waits 5 s for the lock before a write fails
                while (ready := (await http.get(f"{served.url}/health/ready")).json())["status"] != "degraded":
                    await trio.sleep(0.2)
            store = ready["store"]
            assert store["kind"] == "sqlite" and store["failing"]
            assert "writes failing: OperationalError: database is locked" in store["errors"]
            text = (await http.get(f"{served.url}/metrics")).text
            assert metric(text, "apikeyrouter_store_failing", "sqlite") == 1.0
            assert metric(text, "apikeyrouter_store_write_failures_total", "sqlite") >= 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with trio.fail_after(25):  # the writer's backoff tries again, and the write goes through
            while (await http.get(f"{served.url}/health/ready")).json()["status"] != "ready":
                await trio.sleep(0.2)
        assert metric((await http.get(f"{served.url}/metrics")).text, "apikeyrouter_store_failing", "sqlite") == 0.0


async def test_redis_stopped_shows_on_metrics_as_failing_with_its_failed_calls_and_writes(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with serve(tmp_path, "a", _toml(sim_url, redis_url, "a", 2.0)) as (_, url), httpx.AsyncClient() as http:
            text = (await http.get(f"{url}/metrics")).text
            assert metric(text, "apikeyrouter_store_failing", "redis") == 0.0
            assert metric(text, "apikeyrouter_store_redis_call_failures_total", "redis") == 0.0
            redis_server.stop()
            await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH)  # 429: the budget fails closed
            with trio.fail_after(10):  # the next heartbeat finds Redis gone, the next flush cannot write
                while metric(text := (await http.get(f"{url}/metrics")).text, WRITE_FAILURES, "redis") < 1:
                    await trio.sleep(0.1)
            assert metric(text, "apikeyrouter_store_failing", "redis") == 1.0
            assert metric(text, "apikeyrouter_store_redis_call_failures_total", "redis") >= 1
            assert metric(text, "apikeyrouter_store_dropped_rows_total", "redis") == 0.0
            assert "redis://" not in text and "127.0.0.1:" not in text  # no URL, no address
            ready = (await http.get(f"{url}/health/ready")).json()
            assert ready["status"] == "degraded" and ready["store_health"]["failing"]
            assert any(e.startswith("redis unavailable") for e in ready["store_health"]["errors"])
            redis_server.start()
            # Failing until the kept records are written: with the next change (a request) that finds Redis back.
            with trio.fail_after(10):
                while metric((await http.get(f"{url}/metrics")).text, "apikeyrouter_store_failing", "redis") != 0.0:
                    await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH)
                    await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
