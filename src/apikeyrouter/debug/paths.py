"""Where the debug socket lives, and how to tell a live socket from a stale one.

Default path (`default_socket_path(port)`), `<name>` being the proxy port when there is one, else the pid.
The rule itself lives in `config.default_debug_socket` (the config computes `serve`'s socket with it, and
config must not import debug); this module adds creating the private directory and probing:

1. `$XDG_RUNTIME_DIR/apikeyrouter-<name>.sock` when `XDG_RUNTIME_DIR` is set, is a directory and we may
   write to it. That directory is per-user, mode 0700 and cleaned at logout: the right home for a socket.
2. otherwise `/tmp/apikeyrouter-<uid>/<name>.sock`, in a directory we create with mode 0700. A directory
   that already exists must be ours and not a symlink (else someone else could have planted it); a
   group- or world-accessible one of ours is tightened to 0700.

The socket itself is always mode 0600 (see `server.py`). The literal `/tmp` (not `$TMPDIR`) is on
purpose: `serve` and `inspect` run from different shells and must agree on the place.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path
from typing import Literal

from apikeyrouter.config import default_debug_socket, private_socket_dir
from apikeyrouter.errors import DebugChannelError

__all__ = [
    "SOCKET_PATH_MAX",
    "SocketState",
    "candidate_socket_dirs",
    "default_socket_path",
    "discover_sockets",
    "ensure_private_dir",
    "ensure_socket_dir",
    "probe_socket",
]

# sun_path is 108 bytes on Linux (104 on the BSDs), including the terminating NUL.
SOCKET_PATH_MAX = 103

SocketState = Literal["live", "stale", "missing", "not_socket", "forbidden"]


def _xdg_dir() -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg:
        return None
    path = Path(xdg)
    if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
        return path
    return None


def _tmp_dir() -> Path:
    return private_socket_dir()


def ensure_private_dir(path: Path) -> Path:
    """Make sure `path` is a directory owned by us with mode 0700, creating it if needed."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DebugChannelError(
            f"cannot create the debug socket directory {path}: {exc.strerror}", path=str(path)
        ) from exc
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DebugChannelError(f"{path} exists and is not a plain directory; refusing to use it", path=str(path))
    if info.st_uid != os.getuid():
        raise DebugChannelError(
            f"{path} belongs to uid {info.st_uid}, not to us (uid {os.getuid()}); refusing to put a socket there",
            path=str(path),
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        # mkdir's mode is filtered by the umask, and an old directory may have been loosened.
        os.chmod(path, 0o700)
    return path


def default_socket_path(port: int | None = None, *, create: bool = True) -> Path:
    """The debug socket path a process serving on `port` (or, without a port, this pid) uses by default.

    Creates `/tmp/apikeyrouter-<uid>/` (mode 0700) when that is the place and `create` is true (servers);
    clients pass `create=False`. See the module docstring.
    """
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"port must be an integer in 1..65535, not {port!r}")
    path = default_debug_socket(port, os.environ, private_dir=_tmp_dir())
    if create:
        ensure_socket_dir(path)
    return path


def ensure_socket_dir(path: Path) -> None:
    """Before binding at `path`: when it is in the default private directory, create (or check) that
    directory as `ensure_private_dir` does. Other directories are the operator's to provide."""
    if path.parent == _tmp_dir():
        ensure_private_dir(path.parent)


def candidate_socket_dirs() -> list[tuple[Path, str]]:
    """(directory, filename glob) pairs where default sockets may be, without creating anything."""
    dirs: list[tuple[Path, str]] = []
    xdg = _xdg_dir()
    if xdg is not None:
        dirs.append((xdg, "apikeyrouter-*.sock"))
    dirs.append((_tmp_dir(), "*.sock"))
    return dirs


def probe_socket(path: str | os.PathLike[str]) -> SocketState:
    """Is anybody listening at `path`? Never blocks: the connect is non-blocking."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "forbidden"
    if not stat.S_ISSOCK(info.st_mode):
        return "not_socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(os.fspath(path))
    except (BlockingIOError, InterruptedError):
        return "live"  # EAGAIN: a listener whose backlog is full is still a listener
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "forbidden"
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
            return "stale"
        raise
    else:
        return "live"
    finally:
        sock.close()


def discover_sockets() -> list[Path]:
    """Live debug sockets in the default places (for `inspect` without `--socket`)."""
    found: list[Path] = []
    for directory, pattern in candidate_socket_dirs():
        try:
            entries = sorted(directory.glob(pattern))
        except OSError:
            continue
        found.extend(p for p in entries if probe_socket(p) == "live")
    return found
