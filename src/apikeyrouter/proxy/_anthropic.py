"""Anthropic Messages API wire shapes the proxy answers `/v1/messages` with.

- `message_json`: a `SystemResponse` as a Message object (`{"id", "type": "message", "role", "content",
  "model", "stop_reason", "stop_sequence", "usage"}`); text and tool_use content blocks.
- `AnthropicRelay`: a routed stream as Anthropic's server-sent events: `message_start`, `ping`, for each
  content block `content_block_start` / `content_block_delta` (text_delta, input_json_delta) /
  `content_block_stop`, then `message_delta` (stop_reason, usage) and `message_stop`; after a failure
  mid-stream, an `error` event ends it.
- `anthropic_error_shape`: any of the proxy's errors as `{"type": "error", "error": {"type", "message"}}`
  with Anthropic's status and error type for it (the table in `_ERROR_TYPES`; 503 is said as 529).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from apikeyrouter.adapters.tokens import count_request
from apikeyrouter.domain.request import RequestIntent, StreamChunk, SystemResponse, ToolCall, Usage
from apikeyrouter.proxy._http import Headers, HTTPError, json_bytes

__all__ = ["AnthropicRelay", "anthropic_error_shape", "count_tokens_json", "message_json"]

# Anthropic's error type for each status it uses; the proxy's 503s (no key can serve, router stopped) are
# Anthropic's 529 overloaded_error, the status its clients already treat as "busy, retry later".
_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS = {503: 529}

# Our finish reasons back to Anthropic's stop reasons, for answers whose upstream did not say its own.
_STOP_REASONS: Mapping[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def anthropic_error_shape(error: HTTPError, request_id: str) -> tuple[int, dict[str, Any], Headers]:
    status = _STATUS.get(error.status, error.status)
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": error.message}}
    if request_id:
        body["request_id"] = request_id
    # A hard budget does not come back by retrying: tell the SDKs not to (they honour x-should-retry).
    headers: Headers = [(b"x-should-retry", b"false")] if error.code == "budget_exceeded" else []
    return status, body, headers


def _stop_reason(raw: Mapping[str, Any], finish_reason: str | None) -> str | None:
    given = raw.get("stop_reason")
    if isinstance(given, str):
        return given
    if finish_reason is None:
        return None
    return _STOP_REASONS.get(finish_reason, "end_turn")


def _stop_sequence(raw: Mapping[str, Any]) -> str | None:
    given = raw.get("stop_sequence")
    return given if isinstance(given, str) else None


def _tool_input(call: ToolCall) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def _usage(usage: Usage, raw: Any) -> dict[str, int]:
    out = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if isinstance(raw, Mapping):
        for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            value = raw.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[name] = value
    return out


def _message_id(raw: Mapping[str, Any], fallback: str) -> str:
    given = raw.get("id")
    return given if isinstance(given, str) and given.startswith("msg") else fallback


def message_json(response: SystemResponse, message_id: str) -> dict[str, Any]:
    raw = response.raw
    content: list[dict[str, Any]] = []
    if response.content:
        content.append({"type": "text", "text": response.content})
    for call in response.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call)})
    return {
        "id": _message_id(raw, message_id),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": response.model,
        "stop_reason": _stop_reason(raw, response.finish_reason),
        "stop_sequence": _stop_sequence(raw),
        "usage": _usage(response.usage, raw.get("usage")),
    }


def count_tokens_json(intent: RequestIntent) -> dict[str, int]:
    """`/v1/messages/count_tokens`: the offline estimate, the same figure budgets hold for the request."""
    return {"input_tokens": count_request(intent).tokens}


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


_PING = _event("ping", {"type": "ping"})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_TEXT = ("text", -1)


class AnthropicRelay:
    """One streamed answer as an Anthropic client sees it. Content blocks are numbered as they open: a
    text delta continues the open text block or opens one; a tool call's first piece opens a tool_use
    block and its other pieces are input_json_delta events of that block."""

    __slots__ = (
        "block",
        "index",
        "intent",
        "message_id",
        "model",
        "started",
        "stop_reason",
        "stop_sequence",
        "usage",
    )

    def __init__(self, message_id: str, intent: RequestIntent) -> None:
        self.message_id = message_id
        self.intent = intent
        self.model = intent.model
        self.started = False
        self.block: tuple[str, int] | None = None  # the open block: _TEXT or ("tool_use", call index)
        self.index = -1  # the open block's index in the message's content
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None

    def _start(self) -> bytes:
        self.started = True
        usage = self.usage
        input_tokens = usage.input_tokens if usage is not None else count_request(self.intent).tokens
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": usage.output_tokens if usage else 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _PING

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, block: tuple[str, int], content_block: Mapping[str, Any]) -> bytes:
        closed = self._close()
        self.block = block
        self.index += 1
        start = {"type": "content_block_start", "index": self.index, "content_block": content_block}
        return closed + _event("content_block_start", start)

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def event(self, chunk: StreamChunk) -> bytes | None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
        out = b"" if self.started else self._start()
        if chunk.delta:
            if self.block != _TEXT:
                out += self._open(_TEXT, {"type": "text", "text": ""})
            # The most frequent event, written without building its object (the bytes `_delta` would write).
            out += b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,%s%s}}\n\n' % (
                self.index,
                b'"delta":{"type":"text_delta","text":',
                json_bytes(chunk.delta),
            )
        call = chunk.tool_call
        if call is not None:
            if self.block != ("tool_use", call.index):
                tool_id = call.id or f"toolu_{self.message_id}_{call.index}"
                out += self._open(
                    ("tool_use", call.index), {"type": "tool_use", "id": tool_id, "name": call.name or "", "input": {}}
                )
            if call.arguments:
                out += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        if chunk.finish_reason is not None or "stop_reason" in chunk.raw:
            self.stop_reason = _stop_reason(chunk.raw, chunk.finish_reason)
            self.stop_sequence = _stop_sequence(chunk.raw)
        return out or None

    def tail(self) -> bytes:
        out = (b"" if self.started else self._start()) + self._close()
        usage = self.usage or Usage()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": self.stop_sequence},
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        }
        return out + _event("message_delta", delta) + _MESSAGE_STOP

    def failed(self, error: HTTPError) -> bytes:
        _, body, _ = anthropic_error_shape(error, "")
        return _event("error", body)
