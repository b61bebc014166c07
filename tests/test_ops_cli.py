"""`apikeyrouter keys …` and `apikeyrouter budgets`, run as an operator would, against a real proxy.

The proxy (its h11 server on 127.0.0.1) serves a real router in front of the simulator; the commands run with
click's CliRunner in a worker thread (they are blocking, the server is trio in this thread).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio
from click.testing import CliRunner, Result

from apikeyrouter.cli import main
from apikeyrouter.proxy import ProxyApp, serve_proxy
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.secret import Secret
from tests.routing_env import routing_env

ADMIN = "admin-ops-token-7731"
SECRET = "sk-ops-first-secret-4242"
ROTATED = "sk-ops-rotated-secret-9191"
BUDGETS = {"budgets": {"global": {"limit": "5.00", "period": "day"}}}


@attrs.frozen
class Ops:
    router: ApiKeyRouter
    url: str

    async def run(self, *args: str, stdin: str | None = None, env: Mapping[str, str | None] | None = None) -> Result:
        """`apikeyrouter ARGS` against this proxy, the admin token in the environment (unless `env` says)."""
        environ: dict[str, str | None] = {"APIKEYROUTER_URL": self.url, "APIKEYROUTER_ADMIN_TOKEN": ADMIN}
        environ.update(env or {})
        invoke = partial(CliRunner().invoke, main, list(args), input=stdin, env=environ)
        return await trio.to_thread.run_sync(invoke)


@asynccontextmanager
async def ops_env() -> AsyncIterator[Ops]:
    async with routing_env([("oa-1", "sk-sim-oa-1", {})], config=BUDGETS) as env:
        app = ProxyApp(env.router, admin_token=Secret(ADMIN), log_requests=False)
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(
                partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=shutdown.wait, grace=1.0)
            )
            try:
                yield Ops(env.router, listening.url)
            finally:
                shutdown.set()


def outputs(result: Result) -> str:
    return result.stdout + result.stderr


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, outputs(result)
    return json.loads(result.stdout)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, outputs(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


async def test_an_operator_adds_disables_enables_rotates_and_revokes_a_key_without_ever_seeing_its_secret() -> None:
    async with ops_env() as ops:
        results: list[Result] = []

        added = await ops.run(
            "keys", "add", "--provider", "openai", "--id", "oa-2", "--rpm", "60", "--tpm", "9000",
            "--max-in-flight", "3", "--model", "gpt-4o-mini", "--metadata", "team=search", "--metadata", "tier=2",
            stdin=SECRET + "\n",
        )  # fmt: skip
        results.append(added)
        assert added.exit_code == 0, outputs(added)
        assert added.stdout.startswith("added key oa-2 (openai, fp:")
        entry = ops.router.key("oa-2")
        assert entry is not None
        assert entry["fingerprint"] == Secret(SECRET).fingerprint  # the secret came from stdin, stripped
        assert entry["metadata"] == {"team": "search", "tier": "2"}
        assert entry["models"] == ["gpt-4o-mini"]
        assert entry["limits"]["rpm"] == 60 and entry["limits"]["tpm"] == 9000
        assert entry["max_in_flight"] == 3

        listed = await ops.run("keys", "list")
        results.append(listed)
        assert listed.exit_code == 0, outputs(listed)
        assert "oa-1" in listed.stdout and "oa-2" in listed.stdout

        wide = await ops.run("keys", "list", "--wide")
        results.append(wide)
        assert wide.exit_code == 0 and "spend" in wide.stdout and "not shown" not in wide.stdout, outputs(wide)

        as_json = await ops.run("keys", "list", "--json")
        results.append(as_json)
        assert sorted(k["id"] for k in parsed(as_json)) == ["oa-1", "oa-2"]

        disabled = await ops.run("keys", "disable", "oa-2", "--reason", "leaked in a log")
        results.append(disabled)
        assert disabled.stdout == "disabled key oa-2: disabled\n", outputs(disabled)
        assert ops.router.key("oa-2")["lifecycle"] == "disabled"  # type: ignore[index]

        enabled = await ops.run("keys", "enable", "oa-2", "--json")
        results.append(enabled)
        assert parsed(enabled)["lifecycle"] == "active"
        assert ops.router.key("oa-2")["lifecycle"] == "active"  # type: ignore[index]

        rotated = await ops.run("keys", "rotate", "oa-2", "--secret-env", "NEW_OA2", env={"NEW_OA2": ROTATED})
        results.append(rotated)
        assert rotated.exit_code == 0, outputs(rotated)
        assert rotated.stdout == f"rotated key oa-2: fingerprint now {Secret(ROTATED).fingerprint}\n"
        assert ops.router.key("oa-2")["fingerprint"] == Secret(ROTATED).fingerprint  # type: ignore[index]

        revoked = await ops.run("keys", "revoke", "oa-2", "--json")
        results.append(revoked)
        assert parsed(revoked)["lifecycle"] == "revoked"
        assert ops.router.key("oa-2")["lifecycle"] == "revoked"  # type: ignore[index]

        for result in results:
            assert SECRET not in outputs(result) and ROTATED not in outputs(result)


async def test_keys_add_reads_the_secret_from_the_variable_secret_env_names() -> None:
    async with ops_env() as ops:
        added = await ops.run(
            "keys", "add", "--provider", "openai", "--id", "oa-env", "--json", "--secret-env", "MY_KEY",
            env={"MY_KEY": SECRET},
        )  # fmt: skip
        answer = parsed(added)
        assert answer == {
            "id": "oa-env",
            "provider": "openai",
            "fingerprint": Secret(SECRET).fingerprint,
            "metadata": {},
        }
        assert SECRET not in outputs(added)


async def test_budgets_shows_each_budget_as_a_table_and_as_json() -> None:
    async with ops_env() as ops:
        table = await ops.run("budgets")
        assert table.exit_code == 0, outputs(table)
        assert "global" in table.stdout and "5.00" in table.stdout

        rows = parsed(await ops.run("budgets", "--json"))
        assert len(rows) == 1
        assert rows[0].items() >= {"id": "global", "limit": "5.00", "spent": "0", "reserved": "0"}.items()


async def test_a_wrong_or_missing_admin_token_is_one_line_naming_the_variable() -> None:
    async with ops_env() as ops:
        wrong = one_line_error(await ops.run("keys", "list", env={"APIKEYROUTER_ADMIN_TOKEN": "not-the-token"}))
        assert "APIKEYROUTER_ADMIN_TOKEN is wrong" in wrong
        assert "not-the-token" not in wrong

        missing = one_line_error(await ops.run("budgets", env={"APIKEYROUTER_ADMIN_TOKEN": None}))
        assert "admin token is missing" in missing and "APIKEYROUTER_ADMIN_TOKEN" in missing


async def test_what_the_api_refuses_is_its_message_in_one_line_and_never_the_secret() -> None:
    async with ops_env() as ops:
        unknown = one_line_error(await ops.run("keys", "add", "--provider", "nope", stdin=SECRET))
        assert "nope" in unknown and "(400)" in unknown and SECRET not in unknown

        duplicate = one_line_error(await ops.run("keys", "add", "--provider", "openai", "--id", "oa-1", stdin=SECRET))
        assert "already registered" in duplicate and SECRET not in duplicate

        no_key = one_line_error(await ops.run("keys", "disable", "ghost"))
        assert "ghost" in no_key and "(404)" in no_key

        no_secret = one_line_error(await ops.run("keys", "rotate", "oa-1", stdin="\n"))
        assert "no secret" in no_secret


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_nothing_listening_is_one_line_naming_the_url_and_suggesting_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    ops = Ops(router=None, url=url)  # type: ignore[arg-type]  # no router: nothing serves there
    line = one_line_error(await ops.run("keys", "list"))
    assert url in line and "--url" in line

    flag = one_line_error(await ops.run("budgets", "--url", url, env={"APIKEYROUTER_URL": "http://127.0.0.1:1"}))
    assert url in flag  # --url wins over the environment
