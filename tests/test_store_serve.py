"""`serve` on its default SQLite store, as a real child process killed with SIGKILL mid-load and started
again on the same file: what a provider benched stays benched, money stays spent, the audit trail is
whole, and holds of the dead process are gone after their lease. Plus the one-line startup errors for a
corrupt file and a file from a newer version."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.serve_env import ROOT, Served, router_toml, serve_env

PREMIUM = 'metadata = { quality = "premium" }'
KEYS = [("hot", "K_HOT", PREMIUM), ("flaky", "K_FLAKY", PREMIUM), ("good", "K_GOOD", "")]
SECRETS = {"K_HOT": "sk-sim-hot", "K_FLAKY": "sk-sim-flaky", "K_GOOD": "sk-sim-good"}
SIM_KEYS = [
    {"key": "sk-sim-hot", "tpm": 1, "window_s": 3600},  # no request fits: a 429 with an hour's Retry-After
    {"key": "sk-sim-flaky", "error_rate": 1.0},  # every call a 500: its breaker opens
    {"key": "sk-sim-good", "rpm": 1_000_000, "tpm": 1_000_000_000},
]
EXTRA = """
[breaker]
failure_threshold = 2
cooldown = 600.0
max_cooldown = 600.0

[budgets.global]
limit = "100"
period = "month"
"""


def disk_spent(db: Path) -> Decimal:
    """The global budget's spend as the file says now (a second reader, as WAL allows)."""
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT value FROM records WHERE kind = 'budgets'").fetchone()
    return Decimal(json.loads(found[0])["budgets"]["global"]["spent"]) if found else Decimal(0)


def wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def get(http: httpx.AsyncClient, served: Served, path: str) -> Any:
    response = await http.get(f"{served.url}{path}", headers=served.admin_headers)
    assert response.status_code == 200, response.text
    return response.json()


async def budgets(http: httpx.AsyncClient, served: Served) -> dict[str, Any]:
    return {b["id"]: b for b in (await get(http, served, "/budgets"))["data"]}


async def keys_by_id(http: httpx.AsyncClient, served: Served) -> dict[str, Any]:
    return {k["id"]: k for k in (await get(http, served, "/keys"))["data"]}


async def load(http: httpx.AsyncClient, served: Served, done: list[int], stop: trio.Event) -> None:
    while not stop.is_set():
        try:
            response = await http.post(
                f"{served.url}/v1/chat/completions",
                headers=served.client_headers,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "persist me"}]},
            )
        except httpx.HTTPError:
            return  # the process was killed under this request
        done.append(response.status_code)


async def test_kill_9_mid_load_then_restart_on_the_same_file(tmp_path: Path) -> None:
    db = tmp_path / "apikeyrouter.db"  # serve's default: next to its config file
    async with httpx.AsyncClient(timeout=10) as http:
        async with serve_env(tmp_path, KEYS, secrets=SECRETS, sim_keys=SIM_KEYS, extra=EXTRA) as first:
            stop = trio.Event()
            done: list[int] = []
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(load, http, first, done, stop)
                with trio.move_on_after(20):
                    while True:
                        before = await keys_by_id(http, first)
                        if before["hot"]["lifecycle"] == "throttled" and before["flaky"]["breaker"] == "open":
                            break
                        await trio.sleep(0.05)
                states = {k: (v["lifecycle"], v["breaker"], v["requests"]) for k, v in before.items()}
                assert states["hot"][0] == "throttled" and states["flaky"][1] == "open", (states, done[-20:])
                await trio.sleep(0.5)  # more load on "good", some of it written, some still in flight
                seen = Decimal((await budgets(http, first))["global"]["spent"])
                with trio.fail_after(20):  # the load goes on; the writer catches up with what /budgets said
                    while (on_disk := disk_spent(db)) < seen:
                        await trio.sleep(0.02)
                first.signal(signal.SIGKILL)
                await first.process.wait()
                stop.set()
            assert first.process.returncode == -signal.SIGKILL
            assert 200 in done
        assert db.exists()

        async with serve_env(tmp_path, KEYS, secrets=SECRETS, sim_keys=SIM_KEYS, extra=EXTRA) as second:
            after = await keys_by_id(http, second)
            hot, flaky = after["hot"], after["flaky"]
            # Requests in flight when the first 429 or failure came may have extended the bench a little since.
            assert hot["lifecycle"] == "throttled"
            assert 0 <= wall(hot["lifecycle_until_wall"]) - wall(before["hot"]["lifecycle_until_wall"]) < 1.0
            assert wall(hot["lifecycle_until_wall"]) > datetime.now().timestamp() + 3000  # an hour's Retry-After
            assert flaky["breaker"] == "open"
            assert 0 <= wall(flaky["breaker_until_wall"]) - wall(before["flaky"]["breaker_until_wall"]) < 1.0

            spent = Decimal((await budgets(http, second))["global"]["spent"])
            assert spent >= on_disk >= seen > 0  # nothing written before the kill was lost

            trail = await get(http, second, "/state/query?trail=transitions&key=hot")
            moves = [(t["from_state"], t["to_state"]) for t in reversed(trail["data"])]  # oldest first
            assert moves[0] == ("active", "throttled") and all(to == "throttled" for _, to in moves)
            assert trail["data"][0]["until_wall"] == hot["lifecycle_until_wall"]  # the newest is the one in force
            assert all(t["cause"] == "failure" and t["reason"].startswith("rate_limited") for t in trail["data"])

            # Requests still go through (to "good"), and nothing the dead process held is held after its lease
            # (request_deadline 2 s plus graces).
            response = await http.post(
                f"{second.url}/v1/chat/completions",
                headers=second.client_headers,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after the crash"}]},
            )
            assert response.status_code == 200 and response.headers["x-apikeyrouter-key-id"] == "good"
            with trio.fail_after(30):
                while Decimal((await budgets(http, second))["global"]["reserved"]) != 0:
                    await trio.sleep(0.2)

            # Exact to the cent: what the live process counted is what the next one restores.
            await trio.sleep(0.3)
            live = await budgets(http, second)
            live_keys = {k: v["spend"] for k, v in (await keys_by_id(http, second)).items()}
            second.signal(signal.SIGKILL)
            await second.process.wait()

        async with serve_env(tmp_path, KEYS, secrets=SECRETS, sim_keys=SIM_KEYS, extra=EXTRA) as third:
            # The money, exactly; the burn rate and its projection are learned again from the new process's
            # charges, so they differ.
            money = ("limit", "spent", "reserved", "remaining", "period_start", "period_end")
            after = (await budgets(http, third))["global"]
            assert {f: after[f] for f in money} == {f: live["global"][f] for f in money}
            assert {k: v["spend"] for k, v in (await keys_by_id(http, third)).items()} == live_keys
    wal = db.with_name(db.name + "-wal")
    content = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for secret in SECRETS.values():
        assert secret.encode() not in content  # records hold fingerprints, never key material


def serve_once(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "router.toml"
    config.write_text(router_toml("http://127.0.0.1:9", [("k", "K_1", "")], extra=f'[store]\npath = "{db}"\n'))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "K_1": "sk-sim-1"}
    env.update({"TEST_CLIENT_TOKEN": "c", "TEST_ADMIN_TOKEN": "a"})
    return subprocess.run(
        [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_serve_on_a_corrupt_store_file_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"not a database at all\n" * 500)
    done = serve_once(tmp_path, db)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    why = "not a usable database (file is not a database); move it aside to start afresh"
    assert lines == [f"error: store {db}: {why}"], done.stderr


def test_serve_on_a_store_from_a_newer_version_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE records (kind TEXT)")
        conn.execute("PRAGMA user_version = 7")
    done = serve_once(tmp_path, db)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "schema version 7 was written by a newer apikeyrouter" in lines[0], done.stderr
