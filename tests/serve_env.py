"""Run `apikeyrouter serve` as a real subprocess (real signals) in front of a simulator in the test nursery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from apikeyrouter.sim import SimServer, parse_sim_config
from apikeyrouter.sim.provider import SimProvider

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "sk-client-test"
ADMIN = "admin-test"


@attrs.define
class Served:
    process: trio.Process
    url: str
    sim: SimProvider
    sim_url: str
    config_path: Path
    stdout: list[str]
    stderr: bytearray

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    @property
    def client_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {CLIENT}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN}"}


def router_toml(sim_url: str, keys: list[tuple[str, str, str]], *, extra: str = "", server: str = "") -> str:
    """keys: (id, secret env var, extra TOML lines); `server`: more lines of the `[server]` table."""
    text = f"""
[server]
host = "127.0.0.1"
port = 0
client_tokens_env = "TEST_CLIENT_TOKEN"
admin_token_env = "TEST_ADMIN_TOKEN"
grace_period = 5.0
request_deadline = 2.0
{server}

[routing]
objective = "quality"

[[providers]]
id = "sim"
kind = "openai"
base_url = "{sim_url}/v1"
models = ["gpt-4o-mini"]

[debug]
enabled = false

[logging]
level = "info"
{extra}
"""
    for key_id, env, more in keys:
        text += f'\n[[keys]]\nid = "{key_id}"\nprovider = "sim"\nsecret_env = "{env}"\n{more}\n'
    return text


@asynccontextmanager
async def serve_env(
    tmp_path: Path,
    keys: list[tuple[str, str, str]],
    *,
    secrets: Mapping[str, str],
    sim_keys: list[dict[str, Any]] | None = None,
    extra: str = "",
    server: str = "",
) -> AsyncIterator[Served]:
    sim = SimServer(parse_sim_config({"keys": sim_keys or []}))
    async with trio.open_nursery() as nursery:
        sim_port = await nursery.start(sim.serve, "127.0.0.1", 0)
        sim_url = f"http://127.0.0.1:{sim_port}"
        config_path = tmp_path / "router.toml"
        config_path.write_text(router_toml(sim_url, keys, extra=extra, server=server))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "TEST_CLIENT_TOKEN": CLIENT,
            "TEST_ADMIN_TOKEN": ADMIN,
            **secrets,
        }
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None and process.stderr is not None
        stdout: list[str] = []
        stderr = bytearray()

        async def drain_stderr() -> None:
            assert process.stderr is not None
            async for chunk in process.stderr:
                stderr.extend(chunk)

        nursery.start_soon(drain_stderr)
        url = None
        buffer = b""
        with trio.fail_after(20):
            async for chunk in process.stdout:
                buffer += chunk
                *lines, rest = buffer.split(b"\n")
                buffer = rest
                stdout.extend(line.decode() for line in lines)
                found = [line for line in stdout if "listening on" in line]
                if found:
                    url = found[0].split("listening on ", 1)[1].split()[0]
                    break
        assert url is not None, stderr.decode()[-2000:]
        served = Served(process, url, sim.provider, sim_url, config_path, stdout, stderr)
        try:
            yield served
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with trio.move_on_after(10) as cs:
                cs.shield = True
                await process.wait()
            nursery.cancel_scope.cancel()
