"""ASGI primitives for the proxy: parse a request once, read a bounded body, send JSON and errors.

Hand-written rather than a framework because this is the hot path: one pass over the headers, no
per-request objects beyond `Request`, and responses built as bytes directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

import trio

from apikeyrouter.domain.request import StreamChunk

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "ErrorShape",
    "Exchange",
    "HTTPError",
    "Receive",
    "Relay",
    "Request",
    "Scope",
    "Send",
    "deadline_error",
    "error_body",
    "json_bytes",
    "openai_error_shape",
    "read_body",
    "send_error",
    "send_json",
    "send_response",
    "watch_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_bytes(value: Any) -> bytes:
    # Answers may echo client text: an unencodable character (a lone surrogate) never turns into a 500.
    return _dumps(value).encode("utf-8", "backslashreplace")


class HTTPError(Exception):
    """An answer in the OpenAI error shape, raised anywhere in a handler and sent by the dispatcher."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = list(headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# How an API says an error: (status, body, extra headers) for an `HTTPError` and the request id.
ErrorShape = Callable[[HTTPError, str], tuple[int, dict[str, Any], Headers]]


def openai_error_shape(error: HTTPError, request_id: str) -> tuple[int, dict[str, Any], Headers]:
    return error.status, error.body(), []


class Relay(Protocol):
    """One streamed answer in an API's own events: each chunk's events, the normal end, the end after a
    failure (an error event)."""

    def event(self, chunk: StreamChunk) -> bytes | None: ...

    def tail(self) -> bytes: ...

    def failed(self, error: HTTPError) -> bytes: ...


class Request:
    """The parts of an ASGI scope the proxy uses, read in one pass over the headers."""

    __slots__ = (
        "api_key",
        "authorization",
        "content_length",
        "cookie",
        "deadline_header",
        "host",
        "method",
        "objective_header",
        "origin",
        "path",
        "query",
        "request_id",
        "tags_header",
    )

    def __init__(self, scope: Scope) -> None:
        self.method: str = scope["method"]
        path: str = scope["path"]
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        self.path = path
        self.query: bytes = scope.get("query_string", b"")
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.content_length: int | None = None
        self.deadline_header: bytes | None = None
        self.objective_header: bytes | None = None
        self.tags_header: bytes | None = None
        self.request_id: str | None = None
        self.cookie: bytes | None = None  # the dashboard's session; origin and host for its CSRF check
        self.origin: bytes | None = None
        self.host: bytes | None = None
        for name, value in scope["headers"]:
            # Servers hand header names over lower-cased (ASGI spec).
            if name == b"authorization":
                self.authorization = value
            elif name == b"x-api-key":
                self.api_key = value
            elif name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif name == b"x-request-id":
                self.request_id = _clean_request_id(value)
            elif name == b"x-apikeyrouter-deadline":
                self.deadline_header = value
            elif name == b"x-apikeyrouter-objective":
                self.objective_header = value
            elif name == b"cookie":
                self.cookie = value if self.cookie is None else self.cookie + b"; " + value
            elif name == b"origin":
                self.origin = value
            elif name == b"host":
                self.host = value
            elif name == b"x-apikeyrouter-tags":
                self.tags_header = value

    def bearer(self) -> str | None:
        raw = self.authorization
        if raw is None or len(raw) < 8 or raw[:7].lower() != b"bearer ":
            return None
        token = raw[7:].strip()
        return token.decode("latin-1") if token else None

    def x_api_key(self) -> str | None:
        """The `x-api-key` header (how Anthropic clients send their key)."""
        token = self.api_key.strip() if self.api_key is not None else b""
        return token.decode("latin-1") if token else None


def _clean_request_id(value: bytes) -> str | None:
    # A caller-supplied id is echoed back and logged: keep it short and printable.
    if not value or len(value) > 128 or not all(0x21 <= b <= 0x7E for b in value):
        return None
    return value.decode("ascii")


class Exchange:
    """One request's progress, filled in as it is served; the dispatcher logs and counts it at the end."""

    __slots__ = (
        "attempts",
        "client",
        "decision_id",
        "disconnected",
        "finished",
        "key_id",
        "request",
        "request_id",
        "route",
        "shape",
        "started",
        "status",
        "stream_error",
    )

    def __init__(self, request: Request, route: str, request_id: str, shape: ErrorShape = openai_error_shape) -> None:
        self.request = request
        self.route = route
        self.request_id = request_id
        self.shape = shape  # how errors on this route are said (OpenAI's shape, or Anthropic's)
        self.status = 500
        self.started = False  # response headers sent: from here on, errors can only end the body
        self.disconnected = False
        # The last body is being handed to the server: an `http.disconnect` from here on is the connection
        # closing after the answer (Connection: close), not the client leaving before it.
        self.finished = False
        self.key_id: str | None = None
        self.attempts: int | None = None
        self.decision_id: str | None = None
        self.client: str | None = None
        self.stream_error: str | None = None


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole request body, refusing more than `limit` bytes (before reading when declared)."""
    if declared is not None and declared > limit:
        raise BodyTooLarge
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_response(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, value: Any, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    headers = [*_JSON_HEADERS, *extra]
    await send_response(send, status, json_bytes(value), headers)


async def send_error(
    send: Send,
    error: HTTPError,
    extra: Sequence[tuple[bytes, bytes]] = (),
    *,
    shape: ErrorShape = openai_error_shape,
    request_id: str = "",
) -> int:
    """Send `error` in `shape`; returns the status sent."""
    status, body, headers = shape(error, request_id)
    await send_json(send, status, body, [*error.headers, *headers, *extra])
    return status


async def watch_disconnect(receive: Receive, scope: trio.CancelScope, ex: Exchange) -> None:
    """Cancel `scope` when the client goes away (the body has been read: only `http.disconnect` remains).

    Not once the last body is on its way (`ex.finished`): with `Connection: close` the server closes the
    connection while that send is still returning, and its disconnect must neither cancel the send (the
    connection would never close) nor count the completed answer as a client that left (499)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if ex.finished:
                return
            ex.disconnected = True
            scope.cancel(reason="client disconnected")
            return


def deadline_error(deadline: float) -> HTTPError:
    return HTTPError(
        504, f"no answer within the request deadline ({deadline:g}s)", type="timeout_error", code="deadline_exceeded"
    )
