"""`apikeyrouter inspect` against a fake router served from another thread (the CLI calls trio.run itself)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from apikeyrouter.cli import main
from apikeyrouter.debug import commands
from tests.debug_fake import LEAKY_SECRET, ThreadedFake, provider_degraded, short_socket_dir, threaded_fake, transition

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def served() -> Iterator[ThreadedFake]:
    with threaded_fake() as s:
        yield s


def inspect(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["inspect", *args], env={"COLUMNS": "120", **(env or {})})


def test_overview_shows_the_tree_and_the_key_table(served: ThreadedFake) -> None:
    result = inspect("--socket", served.path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"apikeyrouter at {served.path}" in out
    assert "root [supervisor] running  restarts=0" in out
    assert "key:openai-2 [counter] running  restarts=0  mailbox 0/8" in out
    assert "debug [debug] running" in out
    assert "until 12:34:56Z (in 42s)" in out or "until 12:34:56Z (in 41s)" in out
    assert all(k in out for k in ("openai-1", "openai-2", "anthropic-1"))
    assert LEAKY_SECRET not in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_json_has_the_tree_and_the_keys(served: ThreadedFake) -> None:
    result = inspect("--socket", served.path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)

    def check(node: dict[str, object]) -> None:
        assert {"name", "kind", "status", "restarts", "mailbox", "children"} <= node.keys()
        assert isinstance(node["restarts"], int) and isinstance(node["children"], list)
        for child in node["children"]:
            check(child)

    check(doc["tree"])
    assert doc["tree"]["name"] == "root"
    for key in doc["keys"]:
        assert {"id", "provider", "lifecycle", "capacity", "breaker", "in_flight"} <= key.keys()
    assert [k["lifecycle"] for k in doc["keys"]] == ["active", "throttled", "active"]
    assert LEAKY_SECRET not in result.output


def test_the_environment_variable_names_the_socket(served: ThreadedFake) -> None:
    result = inspect("--json", env={commands.ENV_SOCKET: served.path})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["socket"] == served.path


def test_key_shows_one_key_and_its_transitions(served: ThreadedFake) -> None:
    result = inspect("key", "openai-2", "--socket", served.path)
    assert result.exit_code == 0, result.output
    assert "fingerprint  fp:abcdefabcd" in result.output
    assert "recent transitions (1)" in result.output
    assert "429 rate_limited: Retry-After 42" in result.output
    as_json = json.loads(inspect("--socket", served.path, "key", "openai-2", "--json").output)
    assert as_json["key"]["id"] == "openai-2" and len(as_json["transitions"]) == 1


def test_an_unknown_key_is_one_line_and_status_1(served: ThreadedFake) -> None:
    result = inspect("key", "nope", "--socket", served.path)
    assert result.exit_code == 1
    assert result.stderr.strip() == "apikeyrouter inspect: no key with id 'nope' [not_found]"


def test_decisions(served: ThreadedFake) -> None:
    result = inspect("decisions", "--limit", "1", "--socket", served.path)
    assert result.exit_code == 0, result.output
    assert "d-2" in result.output and "d-1" not in result.output
    assert "no eligible key: every key excluded" in result.output
    doc = json.loads(inspect("decisions", "--socket", served.path, "--json").output)
    assert [d["id"] for d in doc["decisions"]] == ["d-1", "d-2"]


def test_nothing_listening_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    result = inspect("--socket", missing)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"apikeyrouter inspect: no debug socket at {missing}: is an apikeyrouter process running?"
    )
    assert "Traceback" not in result.output

    directory = short_socket_dir()
    stale = os.path.join(directory, "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(stale)
    sock.close()
    result = inspect("decisions", "--socket", stale)
    assert result.exit_code == 1
    assert "nothing is listening at" in result.stderr and len(result.stderr.splitlines()) == 1
    shutil.rmtree(directory)


def test_permission_denied_is_a_clear_message(served: ThreadedFake, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    async def forbidden(_path: str) -> trio.SocketStream:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trio, "open_unix_socket", forbidden)  # root ignores file modes; simulate a non-owner
    result = inspect("--socket", served.path)
    assert result.exit_code == 1
    assert "permission denied connecting to" in result.stderr and "owner-only (0600)" in result.stderr


def test_without_a_socket_it_looks_in_the_default_places(monkeypatch: pytest.MonkeyPatch, served: ThreadedFake) -> None:
    monkeypatch.delenv(commands.ENV_SOCKET, raising=False)
    monkeypatch.setattr(commands, "discover_sockets", lambda: [])
    result = inspect()
    assert result.exit_code == 1
    assert "no running apikeyrouter found" in result.stderr and "--socket PATH" in result.stderr

    monkeypatch.setattr(commands, "discover_sockets", lambda: [Path(served.path)])
    assert inspect("--json").exit_code == 0

    monkeypatch.setattr(commands, "discover_sockets", lambda: [Path("/a.sock"), Path("/b.sock")])
    result = inspect()
    assert result.exit_code == 1 and "several apikeyrouter processes" in result.stderr


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "apikeyrouter", "inspect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_events_follow_the_stream_and_ctrl_c_exits_cleanly(served: ThreadedFake) -> None:
    proc = _spawn("events", "--kind", "key", "--json", "--socket", served.path)
    try:
        assert served.fake is not None
        deadline = time.monotonic() + 10
        while served.run_sync(lambda: served.fake.events.subscriber_count) == 0:  # type: ignore[union-attr]
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        fake = served.fake
        served.run_sync(lambda: fake.events.publish(provider_degraded("openai")))  # not a key event: skipped
        served.run_sync(lambda: fake.events.publish(transition("openai-1", "active", "throttled")))
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        assert (event["kind"], event["key"], event["to"]) == ("key.transition", "openai-1", "throttled")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_watch_refreshes_until_ctrl_c(served: ThreadedFake) -> None:
    assert served.fake is not None
    debug = served.fake.debug

    def requests() -> int:
        return served.run_sync(lambda: debug.server_status().requests_total)

    before = requests()
    proc = _spawn("--socket", served.path, "--watch", "--interval", "0.1")
    try:
        # Refreshed at least twice (tree + keys each): on a loaded machine the interpreter is slow to start.
        deadline = time.monotonic() + 20
        while requests() < before + 4:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "key:openai-1" in out and "openai-2" in out


def test_a_narrow_pipe_names_what_it_leaves_out_and_wide_shows_everything(served: ThreadedFake) -> None:
    narrow = inspect("--socket", served.path, env={"COLUMNS": "60"})
    assert narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in narrow.output.splitlines()) <= 60
    assert "throttled" in narrow.output and "breaker" in narrow.output
    assert "not shown at 60 columns:" in narrow.output
    wide = inspect("--socket", served.path, "--wide", env={"COLUMNS": "60"})
    assert wide.exit_code == 0, wide.output
    header = next(line for line in wide.output.splitlines() if line.startswith("id "))
    assert header.split()[-4:] == ["in-flight", "success", "latency", "spend"] and len(header) > 60
    assert "until 12:34:56Z (in " in wide.output and "not shown" not in wide.output
