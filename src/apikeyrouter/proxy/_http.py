"""The proxy app's side of a request: its headers parsed once, JSON and errors sent, an exchange's progress.

Hand-written rather than a framework because this is the hot path: one pass over the headers, no
per-request objects beyond `Request` and `Exchange`, JSON through orjson, answers sent in one write
(`http11.Response.respond`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
import structlog

from apikeyrouter.domain.request import StreamChunk
from apikeyrouter.proxy import http11
from apikeyrouter.proxy.http11 import BodyTooLarge, ClientGone, MalformedBody

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "ErrorShape",
    "Exchange",
    "HTTPError",
    "MalformedBody",
    "Relay",
    "Request",
    "deadline_error",
    "error_body",
    "json_bytes",
    "log_exchange",
    "openai_error_shape",
    "send_error",
    "send_json",
    "send_response",
]

Headers = list[tuple[bytes, bytes]]

log = structlog.get_logger("apikeyrouter.proxy")

_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # What orjson refuses: a lone surrogate in text an answer echoes, a non-string key, an int beyond
        # 64 bits. The stdlib writes those; an unencodable character never turns into a 500.
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
    """The headers the proxy uses, read in one pass; `http` is the server's request (body, other headers)."""

    __slots__ = (
        "api_key",
        "authorization",
        "cookie",
        "deadline_header",
        "host",
        "http",
        "method",
        "objective_header",
        "origin",
        "path",
        "policy_header",
        "query",
        "request_id",
        "tags_header",
    )

    def __init__(self, http: http11.Request) -> None:
        self.http = http
        self.method: str = http.method
        path = http.path
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        self.path = path
        self.query: bytes = http.query  # raw, as sent (state_query decodes it)
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.deadline_header: bytes | None = None
        self.objective_header: bytes | None = None
        self.tags_header: bytes | None = None
        self.policy_header: bytes | None = None  # x-apikeyrouter-policy: this request's own policy, JSON
        self.request_id: str | None = None
        self.cookie: bytes | None = None  # the dashboard's session; origin and host for its CSRF check
        self.origin: bytes | None = None
        self.host: bytes | None = None
        for name, value in http.headers:
            # `_parse` hands header names over lower-cased.
            if name == b"authorization":
                self.authorization = value
            elif name == b"x-api-key":
                self.api_key = value
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
            elif name == b"x-apikeyrouter-policy":
                self.policy_header = value

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
        "endless",
        "key_id",
        "request",
        "request_id",
        "response",
        "route",
        "shape",
        "started",
        "status",
        "stream_error",
    )

    def __init__(
        self,
        request: Request,
        response: http11.Response,
        route: str,
        request_id: str,
        shape: ErrorShape = openai_error_shape,
    ) -> None:
        self.request = request
        self.response = response
        self.route = route
        self.request_id = request_id
        self.shape = shape  # how errors on this route are said (OpenAI's shape, or Anthropic's)
        self.status = 500
        self.started = False  # response headers sent: from here on, errors can only end the body
        self.disconnected = False  # a write found the client gone (the server also says so: `gone`)
        self.endless = False  # an event stream that ends only when its client leaves: that is not a 499
        self.key_id: str | None = None
        self.attempts: int | None = None
        self.decision_id: str | None = None
        self.client: str | None = None
        self.stream_error: str | None = None

    def gone(self) -> bool:
        """The client left before the answer was out (the server cancels the handler when it sees it)."""
        return self.disconnected or self.request.http.client_gone


async def send_response(response: http11.Response, status: int, body: bytes, headers: Headers) -> None:
    await response.respond(status, headers, body)


async def send_json(
    response: http11.Response, status: int, value: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await response.respond(status, [*_JSON_HEADERS, *extra], json_bytes(value))


async def send_error(
    response: http11.Response,
    error: HTTPError,
    extra: Sequence[tuple[bytes, bytes]] = (),
    *,
    shape: ErrorShape = openai_error_shape,
    request_id: str = "",
) -> int:
    """Send `error` in `shape`; returns the status sent."""
    status, body, headers = shape(error, request_id)
    await send_json(response, status, body, [*error.headers, *headers, *extra])
    return status


def deadline_error(deadline: float) -> HTTPError:
    return HTTPError(
        504, f"no answer within the request deadline ({deadline:g}s)", type="timeout_error", code="deadline_exceeded"
    )


def log_exchange(ex: Exchange, elapsed: float) -> None:
    """The request's one log line (`ProxyApp.log_requests`), built only when info lines are written."""
    enabled = getattr(log, "is_enabled_for", None)  # a logger that cannot say is taken to write them
    if enabled is not None and not enabled(logging.INFO):
        return
    log.info(
        "http_request",
        method=ex.request.method,
        path=ex.request.path,
        route=ex.route,
        status=ex.status,
        latency_ms=round(elapsed * 1000, 3),
        request_id=ex.request_id,
        key_id=ex.key_id,
        attempts=ex.attempts,
        decision_id=ex.decision_id,
        client=ex.client,
        stream_error=ex.stream_error,
    )
