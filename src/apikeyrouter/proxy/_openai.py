"""OpenAI wire shapes the proxy answers with: `chat.completion`, `chat.completion.chunk` (SSE), model lists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apikeyrouter.domain.request import StreamChunk, SystemResponse, Usage
from apikeyrouter.proxy._http import HTTPError, error_body, json_bytes

__all__ = [
    "DONE_EVENT",
    "OpenAIRelay",
    "chunk_event",
    "completion_json",
    "error_event",
    "models_json",
    "usage_event",
    "usage_json",
]

DONE_EVENT = b"data: [DONE]\n\n"


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def completion_json(response: SystemResponse, completion_id: str, created: int) -> dict[str, Any]:
    raw = response.raw
    message: dict[str, Any] = {"role": "assistant", "content": response.content}
    refusal = raw.get("refusal")
    if response.tool_calls or isinstance(refusal, str):
        # OpenAI's shape for an answer that is only tool calls (or a refusal): content null, not "".
        message["content"] = response.content or None
    if isinstance(refusal, str):
        message["refusal"] = refusal
    if response.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in response.tool_calls
        ]
    body: dict[str, Any] = {
        "id": raw.get("id") or completion_id,
        "object": "chat.completion",
        "created": raw.get("created") or created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": response.finish_reason,
            }
        ],
        "usage": usage_json(response.usage),
    }
    fingerprint = raw.get("system_fingerprint")
    if fingerprint is not None:
        body["system_fingerprint"] = fingerprint
    return body


def _sse(value: Mapping[str, Any]) -> bytes:
    return b"data: " + json_bytes(value) + b"\n\n"


def chunk_event(chunk: StreamChunk, completion_id: str, created: int, model: str, *, first: bool) -> bytes:
    delta: dict[str, str] = {"role": "assistant", "content": chunk.delta} if first else {"content": chunk.delta}
    return _sse(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": chunk.finish_reason}],
        }
    )


def usage_event(usage: Usage, completion_id: str, created: int, model: str) -> bytes:
    # The shape OpenAI sends for `stream_options.include_usage`: no choices, only usage.
    return _sse(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_json(usage),
        }
    )


def error_event(error: Mapping[str, Any]) -> bytes:
    return _sse(error)


def models_json(models: list[str], owned_by: str = "apikeyrouter") -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": owned_by} for m in models],
    }


class OpenAIRelay:
    """One streamed answer as an OpenAI client sees it: its id, creation time and model, and the usage the
    upstream reported (sent before [DONE] when the client asked for it).

    Each event is written from a prefix made once per model (`id`, `object`, `created`, `model`), the
    chunk's text and its finish reason: the bytes `chunk_event` writes (orjson's compact form, keys in the
    same order), without building and serialising the whole object for every chunk. The upstream's own
    chunk cannot be forwarded as it came: the client sees our completion id and creation time."""

    __slots__ = ("_prefix", "_prefix_model", "completion_id", "created", "first", "include_usage", "model", "usage")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.first = True
        self._prefix = b""
        self._prefix_model: str | None = None

    def event(self, chunk: StreamChunk) -> bytes | None:
        """The SSE event for `chunk`, or None when it carries nothing to send (usage only, say)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
        if not (self.first or chunk.delta or chunk.finish_reason is not None):
            return None
        if self._prefix_model != self.model:
            self._prefix_model = self.model
            self._prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%s,"model":%s,"choices":[' % (
                json_bytes(self.completion_id),
                json_bytes(self.created),
                json_bytes(self.model),
            )
        role = b'"role":"assistant",' if self.first else b""
        self.first = False
        finish = b"null" if chunk.finish_reason is None else json_bytes(chunk.finish_reason)
        return b'%s{"index":0,"delta":{%s"content":%s},"finish_reason":%s}]}\n\n' % (
            self._prefix,
            role,
            json_bytes(chunk.delta),
            finish,
        )

    def tail(self) -> bytes:
        if self.include_usage and self.usage is not None:
            return usage_event(self.usage, self.completion_id, self.created, self.model) + DONE_EVENT
        return DONE_EVENT

    def failed(self, error: HTTPError) -> bytes:
        body = error_body(error.message, type=error.type, param=error.param, code=error.code)
        return error_event(body) + DONE_EVENT
