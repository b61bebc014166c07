"""Default socket paths and the private directory they live in."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from apikeyrouter.config import parse_config
from apikeyrouter.debug import DebugChannelError, default_socket_path, probe_socket
from apikeyrouter.debug import paths as paths_module
from apikeyrouter.debug.paths import ensure_private_dir
from apikeyrouter.debug.server import DebugServer


def test_xdg_runtime_dir_when_set_and_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path(8080) == tmp_path / "apikeyrouter-8080.sock"
    assert default_socket_path() == tmp_path / f"apikeyrouter-{os.getpid()}.sock"


def test_private_tmp_directory_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    private = tmp_path / f"apikeyrouter-{os.getuid()}"
    monkeypatch.setattr(paths_module, "_tmp_dir", lambda: private)
    assert default_socket_path(8080, create=False) == private / "8080.sock"
    assert not private.exists()  # clients do not create it
    assert default_socket_path(8080) == private / "8080.sock"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_the_real_default_without_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent/xdg")
    path = default_socket_path(4242)
    assert path == Path(f"/tmp/apikeyrouter-{os.getuid()}/4242.sock")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("port", [0, 70000, True, "80"])
def test_bad_ports(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        default_socket_path(port)  # type: ignore[arg-type]


def test_a_loose_directory_of_ours_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    ensure_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_a_symlink_or_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(DebugChannelError, match="not a plain directory"):
        ensure_private_dir(link)
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(DebugChannelError, match="not a plain directory"):
        ensure_private_dir(plain)


def test_a_directory_of_someone_else_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(theirs).st_uid + 1)
    with pytest.raises(DebugChannelError, match="not to us"):
        ensure_private_dir(theirs)


def test_probe_tells_live_stale_missing_and_not_a_socket(tmp_path: Path) -> None:
    base = Path(os.path.realpath("/tmp")) / f"akr-probe-{os.getpid()}"
    base.mkdir(exist_ok=True)
    live_path, stale_path = base / "live.sock", base / "stale.sock"
    for p in (live_path, stale_path):
        p.unlink(missing_ok=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(live_path))
    live.listen(1)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(stale_path))
    stale.close()
    try:
        assert probe_socket(live_path) == "live"
        assert probe_socket(stale_path) == "stale"
        assert probe_socket(base / "missing.sock") == "missing"
        (tmp_path / "f").write_text("x")
        assert probe_socket(tmp_path / "f") == "not_socket"
    finally:
        live.close()
        for p in (live_path, stale_path):
            p.unlink(missing_ok=True)
        base.rmdir()


@pytest.mark.parametrize("xdg", [None, "/nonexistent/xdg", "tmp"], ids=["unset", "missing", "writable"])
def test_the_config_default_is_the_debug_default(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `serve` takes its socket from the config, `inspect` from default_socket_path: one rule must decide both,
    # and never a socket directly in the world-writable /tmp.
    env = {} if xdg is None else {"XDG_RUNTIME_DIR": str(tmp_path) if xdg == "tmp" else xdg}
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configured = parse_config({"server": {"port": 9001}}, env=env).debug.socket
    assert configured == default_socket_path(9001, create=False)
    if xdg == "tmp":
        assert configured == tmp_path / "apikeyrouter-9001.sock"
    else:
        assert configured == Path(f"/tmp/apikeyrouter-{os.getuid()}/9001.sock")
    assert configured.parent != Path("/tmp")


def test_a_free_port_config_uses_the_pid_like_the_debug_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert parse_config({"server": {"port": 0}}, env={}).debug.socket == default_socket_path(create=False)


async def test_the_server_creates_the_private_directory_of_a_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    private = tmp_path / f"apikeyrouter-{os.getuid()}"
    monkeypatch.setattr(paths_module, "_tmp_dir", lambda: private)
    path = default_socket_path(4343, create=False)  # what a config names: nothing created yet
    assert not private.exists()
    server = DebugServer(object(), path)  # type: ignore[arg-type]
    server.bind()
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700 and probe_socket(path) == "live"
    finally:
        server.close_socket()
