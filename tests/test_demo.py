"""`apikeyrouter demo` as a newcomer runs it: a real subprocess on a free port, stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from apikeyrouter import ChatMessage
from apikeyrouter.demo import ADMIN_TOKEN, CLIENT_TOKEN, EU_CLIENT_TOKEN
from apikeyrouter.sim.wire import answer_for

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    """The demo's $TMPDIR: short (its socket path must fit a Unix socket), and ours alone to look into."""
    path = Path(tempfile.mkdtemp(prefix="akr-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@attrs.define
class Demo:
    process: trio.Process
    url: str
    config_path: Path
    stdout: list[str]

    async def wait_for_line(self, pattern: str) -> str:
        with trio.fail_after(10):
            while not any(re.search(pattern, line) for line in self.stdout):
                await trio.sleep(0.05)
        return next(line for line in self.stdout if re.search(pattern, line))


@asynccontextmanager
async def running_demo(tmpdir: Path, **env: str) -> AsyncIterator[Demo]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "apikeyrouter", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmpdir), **env},
    )
    assert process.stdout is not None
    stdout: list[str] = []

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            *lines, buffer = (buffer + chunk).split(b"\n")
            stdout.extend(line.decode() for line in lines)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_stdout)
        demo = Demo(process, "", Path(), stdout)
        demo.url = (await demo.wait_for_line(r"listens on http://")).split("listens on ")[1].split()[0]
        demo.config_path = Path((await demo.wait_for_line(r"^config: ")).split()[1])
        try:
            yield demo
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(10) as cs:
                cs.shield = True
                await process.wait()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_demo_removes_its_directory_when_stopped(tmpdir_short: Path, signum: int) -> None:
    async with running_demo(tmpdir_short) as demo:
        directory = demo.config_path.parent
        assert directory.parent == tmpdir_short and directory.name.startswith("apikeyrouter-demo-")
        assert (directory / "router.toml").is_file() and (directory / "debug.sock").is_socket()
        demo.process.send_signal(signum)
        with trio.fail_after(15):
            assert await demo.process.wait() == 0
    assert list(await trio.Path(tmpdir_short).iterdir()) == []


def longest_prompt() -> str:
    """A prompt the simulator answers with its longest answer (32 tokens, 30 ms apart in the demo)."""
    for i in range(10_000):
        prompt = f"tell me more {i}"
        if len(answer_for("gpt-4o-mini", [ChatMessage("user", prompt)], None).pieces) == 32:
            return prompt
    raise AssertionError("no prompt found")


async def test_a_second_signal_still_removes_the_directory(tmpdir_short: Path) -> None:
    async with running_demo(tmpdir_short) as demo, httpx.AsyncClient(timeout=10) as http:
        body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": longest_prompt()}]}
        headers = {"authorization": f"Bearer {CLIENT_TOKEN}"}
        async with http.stream("POST", f"{demo.url}/v1/chat/completions", headers=headers, json=body) as response:
            await response.aiter_lines().__anext__()  # a ~1 s stream in flight: the first signal waits for it
            # Two different signals are never coalesced: the second is seen while the first is draining.
            demo.process.send_signal(signal.SIGINT)
            demo.process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await demo.process.wait() == 1  # forced: no cleanup code runs after this
    assert list(await trio.Path(tmpdir_short).iterdir()) == []


async def test_a_reload_reads_the_users_environment_and_says_what_changed(tmpdir_short: Path) -> None:
    async with running_demo(tmpdir_short, MY_EXTRA_KEY="sk-sim-extra") as demo:
        text = demo.config_path.read_text()
        text = text.replace(
            "\n[debug]", '\n[[keys]]\nid = "extra"\nprovider = "openai-sim"\nsecret_env = "MY_EXTRA_KEY"\n\n[debug]'
        )
        demo.config_path.write_text(text)
        demo.process.send_signal(signal.SIGHUP)
        assert await demo.wait_for_line("config reloaded") == "config reloaded: keys added: extra"
        async with httpx.AsyncClient() as http:
            got = await http.get(f"{demo.url}/keys/extra", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert got.status_code == 200, got.text
        demo.process.send_signal(signal.SIGHUP)  # the same file again
        with trio.fail_after(10):
            while demo.stdout.count("config reloaded: nothing changed") < 1:
                await trio.sleep(0.05)


async def test_the_demo_client_has_its_budget_and_its_policy_keeps_it_on_eu_keys(tmpdir_short: Path) -> None:
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with running_demo(tmpdir_short) as demo, httpx.AsyncClient() as http:
        assert any("As client demo-eu" in line for line in demo.stdout)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Bonjour"}]}
        for _ in range(4):
            got = await http.post(
                f"{demo.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {EU_CLIENT_TOKEN}"}
            )
            assert got.status_code == 200, got.text
            assert got.headers["x-apikeyrouter-key-id"] == "healthy"
        decision = (await http.get(f"{demo.url}/decisions", headers=admin)).json()
        assert "eu-only" in str(decision) and "demo-eu" in str(decision)
        budgets = {b["id"]: b for b in (await http.get(f"{demo.url}/budgets", headers=admin)).json()["data"]}
        assert budgets["client:demo-eu"]["limit"] == "0.05" and budgets["client:demo-eu"]["spent"] != "0"
