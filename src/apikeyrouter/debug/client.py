"""A small trio client for the debug channel.

    answer = await request(path, {"op": "keys"})          # the whole answer line, ok or not
    keys = await call(path, "keys")                        # its data; DebugRequestError when not ok
    async for event in subscribe(path, ["key"]): ...       # events until the server goes away

No `timeout=` parameters: callers own the deadline (`with trio.fail_after(5): ...`).
Connecting raises `DebugChannelUnavailable` with a `reason` (missing, refused, forbidden, error) and a
message fit to show a human as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import trio

from apikeyrouter.debug.protocol import LineReader, LineTooLong, encode_line
from apikeyrouter.errors import DebugChannelUnavailable, DebugRequestError

__all__ = ["DebugClient", "call", "connect", "request", "subscribe"]

# Answers can be large (thousands of keys); this only guards against a runaway peer.
MAX_ANSWER = 64 * 1024 * 1024


async def _open(path: str) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except FileNotFoundError:
        msg, reason = f"no debug socket at {path}: is an apikeyrouter process running?", "missing"
    except ConnectionRefusedError:
        msg = f"nothing is listening at {path} (a stale socket: the process that created it has exited)"
        reason = "refused"
    except PermissionError:
        msg = (
            f"permission denied connecting to {path}: the debug socket is owner-only (0600); "
            "run inspect as the user that runs the router"
        )
        reason = "forbidden"
    except OSError as exc:
        msg, reason = f"cannot connect to the debug socket at {path}: {exc.strerror or exc}", "error"
    raise DebugChannelUnavailable(msg, path=path, reason=reason)


class DebugClient:
    """One connection; requests on it are answered in order."""

    def __init__(self, path: str, stream: trio.SocketStream) -> None:
        self.path = path
        self._stream = stream
        self._reader = LineReader(stream, MAX_ANSWER)

    async def __aenter__(self) -> DebugClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def send(self, obj: dict[str, Any]) -> None:
        try:
            await self._stream.send_all(encode_line(obj))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._closed() from exc

    async def receive(self) -> dict[str, Any] | None:
        """The next answer line, or None when the server closed the connection."""
        try:
            line = await self._reader.next()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if line is None:
            return None
        if isinstance(line, LineTooLong):
            raise DebugRequestError(f"answer longer than {line.limit} bytes", path=self.path, code="protocol")
        try:
            answer = json.loads(line)
        except (ValueError, RecursionError):
            raise DebugRequestError(f"unreadable answer from {self.path}", path=self.path, code="protocol") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise DebugRequestError(f"unexpected answer from {self.path}", path=self.path, code="protocol")
        return answer

    async def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.send(obj)
        answer = await self.receive()
        if answer is None:
            raise self._closed()
        return answer

    async def call(self, op: str, **args: Any) -> Any:
        return data_of(await self.request({"op": op, **args}), self.path)

    def _closed(self) -> DebugRequestError:
        return DebugRequestError(f"the server at {self.path} closed the connection", path=self.path, code="closed")


def data_of(answer: dict[str, Any], path: str) -> Any:
    """The `data` of an ok answer; `DebugRequestError` (with the server's code) otherwise."""
    if answer.get("ok"):
        return answer.get("data")
    error = answer.get("error")
    if not isinstance(error, dict):
        raise DebugRequestError(f"unexpected answer from {path}", path=path, code="protocol")
    code = str(error.get("code", "unknown"))
    raise DebugRequestError(str(error.get("message", code)), path=path, code=code)


async def connect(path: str | os.PathLike[str]) -> DebugClient:
    p = os.fspath(path)
    return DebugClient(p, await _open(p))


async def request(path: str | os.PathLike[str], obj: dict[str, Any]) -> dict[str, Any]:
    """Send one request on a fresh connection; return the answer line as a dict (ok or not)."""
    async with await connect(path) as client:
        return await client.request(obj)


async def call(path: str | os.PathLike[str], op: str, **args: Any) -> Any:
    """Send `{"op": op, **args}`; return the answer's data, or raise `DebugRequestError`."""
    async with await connect(path) as client:
        return await client.call(op, **args)


async def subscribe(path: str | os.PathLike[str], kinds: Iterable[str] | None = None) -> AsyncIterator[dict[str, Any]]:
    """Yield events (`{"kind", "at", ...}`) as the server publishes them, until it closes the stream.

    A subscriber that falls behind is dropped by the server: that raises `DebugRequestError(code="lagged")`.
    """
    async with await connect(path) as client:
        wanted = list(kinds or [])
        data_of(await client.request({"op": "subscribe", "events": wanted}), client.path)
        while True:
            answer = await client.receive()
            if answer is None:
                return
            event = data_of(answer, client.path)
            if isinstance(event, dict):
                yield event
