"""A process that cannot start says why in one line and exits 1; a bug keeps its traceback.

The CLI runs as a real subprocess against a port this test holds open on 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from apikeyrouter.cli import _run_until_stopped, startup_failure

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    """A short $TMPDIR for the demo (pytest's tmp_path can be too long for its Unix socket path)."""
    path = Path(tempfile.mkdtemp(prefix="akr-"))
    yield path
    for child in path.iterdir():
        subprocess.run(["rm", "-rf", str(child)], check=False)
    path.rmdir()


def run_cli(*args: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "TEST_KEY": "sk-test"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, "-m", "apikeyrouter", *args], capture_output=True, text=True, env=env, timeout=60
    )


def router_toml(port: int, extra: str = "") -> str:
    return f"""
[server]
port = {port}
[[providers]]
id = "sim"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[keys]]
id = "k"
provider = "sim"
secret_env = "TEST_KEY"
{extra}
"""


def serve(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "router.toml"
    path.write_text(text)
    return run_cli("serve", "--config", str(path))


def human_lines(stderr: str) -> list[str]:
    """serve's stderr without its JSON log lines."""
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def test_demo_on_a_port_in_use_is_one_line_and_leaves_no_directory(taken_port: int, tmpdir_short: Path) -> None:
    result = run_cli("demo", "--port", str(taken_port), tmpdir=tmpdir_short)
    assert result.returncode == 1
    assert result.stderr == f"error: 127.0.0.1:{taken_port} is already in use (try --port 0)\n"
    assert list(tmpdir_short.iterdir()) == []  # no apikeyrouter-demo-* left behind


def test_sim_on_a_port_in_use_is_one_line(taken_port: int) -> None:
    result = run_cli("sim", "--port", str(taken_port))
    assert result.returncode == 1
    assert result.stderr == f"error: 127.0.0.1:{taken_port} is already in use (try --port 0)\n"
    assert result.stdout == ""


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path, taken_port: int) -> None:
    result = serve(tmp_path, router_toml(taken_port, "[debug]\nenabled = false\n"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert human_lines(result.stderr) == [
        f"error: 127.0.0.1:{taken_port} is already in use "
        f"(set [server] port in {tmp_path / 'router.toml'} to a free port, or 0 for any)"
    ]


def test_serve_with_a_debug_socket_it_cannot_create_is_one_line(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-such-dir" / "debug.sock"
    result = serve(tmp_path, router_toml(0, f'[debug]\nsocket = "{socket_path}"\n'))
    assert result.returncode == 1
    assert human_lines(result.stderr) == [
        f"error: cannot create the debug socket at {socket_path}: No such file or directory"
    ]


def test_config_files_that_are_not_text_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00port")
    result = run_cli("serve", "--config", str(path))
    assert (result.returncode, result.stderr) == (1, f"error: cannot read config file {path}: not UTF-8 text\n")
    result = run_cli("sim", "--port", "0", "--config", str(path))
    assert result.returncode == 2  # a usage error, as for any bad sim.toml
    assert "Traceback" not in result.stderr and f"cannot read {path}: not UTF-8 text" in result.stderr


def in_use() -> OSError:
    return OSError(errno.EADDRINUSE, "Address already in use")


def test_nested_groups_are_unwrapped_and_each_reason_said_once() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [in_use()]), in_use()])
    assert startup_failure(nested, host="::1", port=80, hint="try --port 0") == [
        "[::1]:80 is already in use (try --port 0)"
    ]


def test_a_bug_among_startup_errors_is_not_hidden() -> None:
    mixed = ExceptionGroup("outer", [in_use(), ExceptionGroup("inner", [KeyError("oops")])])
    assert startup_failure(mixed, host="127.0.0.1", port=80, hint="") is None


def test_an_unexpected_exception_keeps_its_traceback() -> None:
    async def buggy() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 1)
            raise RuntimeError("a real bug")

    with pytest.raises(BaseExceptionGroup) as info:
        _run_until_stopped(buggy, started=lambda: False, host="127.0.0.1", port=1, hint="")
    assert info.group_contains(RuntimeError, match="a real bug")


def test_an_os_error_once_running_keeps_its_traceback() -> None:
    async def fails_later() -> None:
        raise in_use()

    with pytest.raises(OSError, match="Address already in use"):
        _run_until_stopped(fails_later, started=lambda: True, host="127.0.0.1", port=1, hint="")
