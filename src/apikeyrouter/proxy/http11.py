"""The proxy's HTTP/1.1 server on trio sockets, one request at a time per connection; requests are read by
`_parse` (a strict request reader, checked against h11), answers written here.

Why our own: hypercorn-trio tops out near 2,000 hello-world requests/s on this machine and trio + h11 near
10,000; and a server of our own lets the app see a client leave at once (hypercorn never cancels a handler
whose client went away: the app had to watch for `http.disconnect` itself).

The interface to the app is two small objects, not ASGI: a `Request` (method, path, query, headers, a body
read on demand under a size limit) and a `Response` writer (`respond` for a whole answer in one write, or
`start` / `send` / `end` for a stream). A handler is `async def handler(request, response)`.

What a connection does, in order:
- keep-alive: after an answer, the next request on the same connection; pipelined requests are read ahead
  (up to `pipeline_bytes`) and answered in order, one at a time;
- deadlines: `keep_alive_s` for the first byte of the next request, then `header_read_s` for the rest of
  its head (a slowloris client is closed when it runs out), both from trio's clock;
- limits: a head larger than `max_header_bytes` is a 431, a malformed one a 400, each with a JSON body in
  the OpenAI error shape, and the connection closes; the body limit is the app's, given to `read_body`;
- `Expect: 100-continue` is answered when the app first reads the body (not for a body it refuses);
- client disconnect: once the body is read, the connection watches its socket; EOF or a reset cancels the
  handler at once (`request.client_gone` says so), which cancels its upstream call. A peer that closes
  after the last byte of the answer went out (`Connection: close`) is not a client that left;
- a request body the app did not read is drained (up to `drain_bytes`) to keep the connection, else closed.

Graceful drain (`serve_http`'s `shutdown_trigger`): stop accepting (the listeners close), close idle
keep-alive connections, answer `Connection: close` to anything that starts now, let requests in flight
(streams included) finish within `grace`, then cancel what is left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote

import attrs
import orjson

from apikeyrouter.proxy._parse import Head

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "Handler",
    "MalformedBody",
    "Request",
    "Response",
    "ServerLimits",
    "Wire",
]

Headers = list[tuple[bytes, bytes]]


@attrs.frozen
class ServerLimits:
    """What one connection may cost the server."""

    max_header_bytes: int = 16 * 1024  # request line and headers; more is a 431
    header_read_s: float = 10.0  # from a request's first byte to the end of its head (slowloris)
    # Idle keep-alive: longer than the usual load balancer idle timeout (60 s), so the balancer closes first.
    keep_alive_s: float = 75.0
    backlog: int = 2048
    pipeline_bytes: int = 64 * 1024  # read ahead of the request being answered
    drain_bytes: int = 64 * 1024  # an unread body up to this size is discarded to keep the connection


class BodyTooLarge(Exception):
    """The request body is larger than the limit its reader gave."""


class ClientGone(Exception):
    """The client closed or reset the connection (while its body was read, or an answer written)."""


class MalformedBody(Exception):
    """The request body broke HTTP framing (a bad chunk, say); the connection closes after the answer."""


class Wire(Protocol):
    """The connection as a `Request` and its `Response` use it (`_conn._Connection`)."""

    keep_alive: bool  # the connection may serve another request after this answer
    http10: bool  # the client speaks HTTP/1.0: no chunked framing
    head_only: bool  # a HEAD request: no body in the answer

    @property
    def draining(self) -> bool: ...

    def body_complete(self) -> bool: ...

    async def read_body(self, limit: int) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...


class Request:
    """One request's head, and its body on demand. Header names are lower-case bytes (`_parse` makes them so)."""

    __slots__ = (
        "_conn",
        "client_gone",
        "close_requested",
        "content_length",
        "head_bytes",
        "headers",
        "method",
        "path",
        "query",
        "target",
    )

    def __init__(self, conn: Wire, head: Head) -> None:
        self._conn = conn
        self.method: str = head.method.decode("ascii")  # a token: ASCII
        self.target: bytes = head.target
        raw, _, self.query = head.target.partition(b"?")
        path = raw.decode("latin-1")
        self.path: str = unquote(path) if "%" in path else path
        self.headers: Headers = head.headers  # names lower-case (`_parse`)
        self.content_length: int | None = head.content_length
        self.close_requested: bool = head.close  # `Connection: close`
        self.head_bytes: int = head.size  # on the wire, the blank line included
        # Set by the server before it cancels the handler: the client left before the answer was out.
        self.client_gone = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookies(self) -> dict[str, str]:
        """The `Cookie` header's pairs (the first of each name)."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            if key == b"cookie":
                for pair in value.decode("latin-1").split(";"):
                    name, eq, val = pair.strip().partition("=")
                    if eq and name and name not in out:
                        out[name] = val
        return out

    def body_complete(self) -> bool:
        """The whole body is here already (it came with the head): `read_body` will not wait."""
        return self._conn.body_complete()

    async def read_body(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes (before reading any when declared)."""
        return await self._conn.read_body(limit)


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class Response:
    """How a handler answers. `respond` sends a whole answer in one write; a stream is `start`, any number
    of `send`, then `end`. Header names are lower-case bytes; `respond` adds `content-length`, `start`
    chunked framing (close-delimited for an HTTP/1.0 client).

    Written here rather than through h11's writer, which validates every header with regular expressions
    at about the cost of parsing the request; values are checked for CR and LF (no header injection),
    names are our own code's literals."""

    __slots__ = ("_chunked", "_conn", "finished", "started", "status")

    def __init__(self, conn: Wire) -> None:
        self._conn = conn
        self.started = False  # the status line went out: from here on an error can only end the body
        self.finished = False  # the last byte is on its way
        self.status = 0
        self._chunked = False

    def _reset(self) -> None:
        self.started = self.finished = self._chunked = False
        self.status = 0

    async def respond(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        out = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        self.finished = True
        if self._conn.head_only:
            await self._conn.send_all(out)
        else:
            await self._conn.send_all(out + body)

    async def start(self, status: int, headers: Sequence[tuple[bytes, bytes]], data: bytes = b"") -> None:
        """The head, and `data` (the first piece of the body, if it is in hand) in the same write."""
        if self._conn.http10:
            self._conn.keep_alive = False  # an HTTP/1.0 client reads to the end of the connection
            framing = b""
        else:
            self._chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        head = self._head(status, headers, framing)
        if data:
            head += b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data
        await self._conn.send_all(head)

    async def send(self, data: bytes) -> None:
        if data:
            await self._conn.send_all(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    async def end(self, data: bytes = b"") -> None:
        self.finished = True
        if self._chunked:
            await self._conn.send_all((b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)) if data else b"0\r\n\r\n")
        elif data:
            await self._conn.send_all(data)

    def _head(self, status: int, headers: Sequence[tuple[bytes, bytes]], framing: bytes) -> bytes:
        if self.started:
            raise RuntimeError("the response has started already")
        conn = self._conn
        lines = []
        for name, value in headers:
            if name == b"connection" and value.lower() == b"close":
                conn.keep_alive = False
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        block = b"".join(lines)
        # One CR and one LF per line, or a value carried its own (header injection): two C-level counts
        # instead of two searches per value.
        if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines):
            bad = [name for name, value in headers if b"\n" in name + value or b"\r" in name + value]
            raise ValueError(f"header {bad[0]!r} has a CR or LF in it")
        if conn.draining:
            conn.keep_alive = False
        close = b"" if conn.keep_alive else b"connection: close\r\n"
        self.started = True
        self.status = status
        return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (status, _REASONS.get(status, b""), block, framing, close)


Handler = Callable[[Request, Response], Awaitable[None]]


def protocol_error_body(status: int, message: str) -> bytes:
    """A refusal at the HTTP layer, in the OpenAI error shape like every other answer of the proxy."""
    code = {431: "request_header_fields_too_large", 413: "request_too_large"}.get(status, "bad_request")
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return orjson.dumps({"error": error})
