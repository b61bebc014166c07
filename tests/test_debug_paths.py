"""Default socket paths and the private directory they live in."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from apikeyrouter.debug import DebugChannelError, default_socket_path, probe_socket
from apikeyrouter.debug import paths as paths_module
from apikeyrouter.debug.paths import ensure_private_dir


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
