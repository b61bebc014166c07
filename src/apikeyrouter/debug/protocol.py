"""The debug channel's wire format: newline-delimited JSON, shared by server and client.

Every answer is one line: `{"ok": true, "op": ..., "data": ..., "now": ..., "now_wall": ...}` or
`{"ok": false, "op": ... | null, "error": {"code": ..., "message": ...}}` (`ErrorCode` lists the codes).
`docs/debug.md` describes every op.

Outgoing data goes through `to_jsonable`, which also scrubs anything shaped like provider key material.
The data the router hands out holds key ids and fingerprints only; free text (crash reasons, provider
error messages quoted in lifecycle reasons) is where a secret could slip through, and people paste this
output into tickets. A second line of defence costs one regex pass per string.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.runtime.views import tree_to_json

__all__ = [
    "MAX_LINE",
    "ErrorCode",
    "LineReader",
    "LineTooLong",
    "encode_line",
    "error_response",
    "find_node",
    "node_to_json",
    "ok_response",
    "scrub",
    "to_jsonable",
]

MAX_LINE = 64 * 1024  # a request line longer than this is refused with `line_too_long`


class ErrorCode(enum.StrEnum):
    BAD_ENCODING = "bad_encoding"  # the line is not UTF-8
    BAD_JSON = "bad_json"  # the line is not JSON
    BAD_REQUEST = "bad_request"  # JSON, but not an object with a string "op"
    LINE_TOO_LONG = "line_too_long"
    UNKNOWN_OP = "unknown_op"
    BAD_ARGUMENT = "bad_argument"  # a field of the request has the wrong type or range
    NOT_FOUND = "not_found"  # no such actor / key
    BUSY = "busy"  # too many clients connected; the connection is closed after this line
    LAGGED = "lagged"  # a subscriber could not keep up; the connection is closed after this line
    IDLE = "idle"  # no request for too long; the connection is closed after this line
    INTERNAL = "internal"  # the router raised while answering; the connection stays usable


# Known provider key shapes: OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Google (AIza), Groq (gsk_),
# xAI (xai-), and bearer tokens quoted from headers. Lengths keep ordinary ids ("sk-team-a") intact.
_SECRET = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{30,}|gsk_[A-Za-z0-9]{20,}|xai-[A-Za-z0-9]{20,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{16,}=*"
)
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    return _SECRET.sub(REDACTED, text)


def to_jsonable(value: Any, *, _depth: int = 0) -> Any:
    """A JSON-ready, scrubbed copy of `value`. attrs instances become dicts; unknown objects their str().

    Non-finite floats become null (strict JSON has no Infinity): "no prediction" reads the same.
    """
    if _depth > 64:
        return "…"
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, _depth=_depth + 1)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # never the bytes themselves
    if isinstance(value, TreeNode):
        return node_to_json(value)
    if attrs.has(type(value)):
        return to_jsonable(attrs.asdict(value, recurse=False), _depth=_depth + 1)
    if isinstance(value, Mapping):
        return {scrub(str(k)): to_jsonable(v, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, _depth=_depth + 1) for v in value]
    return scrub(str(value))


def node_to_json(node: TreeNode, *, with_state: bool = False) -> dict[str, Any]:
    """`api.tree_to_json`, optionally with each node's `state` (which may be an attrs instance)."""
    out = tree_to_json(node)
    if with_state:
        out["state"] = to_jsonable(node.state)
        out["children"] = [node_to_json(c, with_state=True) for c in node.children]
    return out


def find_node(root: TreeNode, ident: str) -> tuple[TreeNode, list[str]] | None:
    """The node named `ident` (first in depth-first order) with its path of names from the root.

    `ident` may also be a path of names separated by "/" (`root/providers/provider:openai`), to pick one
    of several nodes with the same name.
    """
    if "/" in ident:
        parts = ident.split("/")
        if parts[0] == root.name:
            node, trail = root, [root.name]
            for part in parts[1:]:
                nxt = next((c for c in node.children if c.name == part), None)
                if nxt is None:
                    break
                node, trail = nxt, [*trail, part]
            else:
                return node, trail
    stack: list[tuple[TreeNode, list[str]]] = [(root, [root.name])]
    while stack:
        node, trail = stack.pop()
        if node.name == ident:
            return node, trail
        stack.extend((c, [*trail, c.name]) for c in reversed(node.children))
    return None


def _wall_now() -> str:
    return render_wall(time.time(), 0.0)


def ok_response(op: str, data: Any) -> dict[str, Any]:
    # `now` is the router's trio clock, which `*_until` and `at` fields are measured on; `now_wall` is for humans.
    return {"ok": True, "op": op, "data": data, "now": trio.current_time(), "now_wall": _wall_now()}


def error_response(code: ErrorCode, message: str, op: str | None = None) -> dict[str, Any]:
    return {"ok": False, "op": op, "error": {"code": code.value, "message": scrub(message)}}


def encode_line(obj: Any) -> bytes:
    return json.dumps(to_jsonable(obj), separators=(",", ":"), allow_nan=False).encode() + b"\n"


class LineTooLong:
    """Returned by `LineReader.next` in place of a line longer than the limit (which is skipped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit


class LineReader:
    """Split a byte stream into lines, never buffering more than `limit` bytes of one line.

    An over-long line is reported once (`LineTooLong`) and its remaining bytes are skipped up to the next
    newline, so the connection stays usable. A final line without a newline is still returned.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int = MAX_LINE) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()
        self._skipping = False
        self._eof = False

    async def next(self) -> bytes | LineTooLong | None:
        """The next line (without its newline), `LineTooLong`, or None at end of stream."""
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                if self._skipping:
                    self._skipping = False
                    continue
                if len(line) > self._limit:
                    return LineTooLong(self._limit)
                return line.removesuffix(b"\r")
            if len(self._buf) > self._limit:
                self._buf.clear()
                if not self._skipping:
                    self._skipping = True
                    return LineTooLong(self._limit)
            if self._eof:
                if self._buf and not self._skipping:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line.removesuffix(b"\r")
                return None
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self._eof = True
            self._buf += chunk
