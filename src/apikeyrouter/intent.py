"""The system's own request and response values, independent of any provider's wire format.

A `RequestIntent` is an OpenAI-style chat request (the lingua franca callers already speak);
adapters translate it to their provider and normalise the answer back to a `SystemResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from apikeyrouter.errors import InvalidRequest

__all__ = [
    "ChatMessage",
    "RequestIntent",
    "ResponseMetadata",
    "StreamChunk",
    "SystemResponse",
    "Usage",
]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@attrs.frozen
class ChatMessage:
    role: str
    content: str


@attrs.frozen
class RequestIntent:
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    # Other OpenAI parameters passed through untouched by adapters that understand them.
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_openai(cls, body: Mapping[str, Any]) -> RequestIntent:
        """Validate an OpenAI chat-completions body; raises `InvalidRequest` naming the problem."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
        messages: list[ChatMessage] = []
        for i, m in enumerate(raw_messages):
            if not isinstance(m, Mapping):
                raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
            role = m.get("role")
            if role not in _ROLES:
                raise InvalidRequest(f"messages[{i}].role must be one of {sorted(_ROLES)}", param=f"messages[{i}].role")
            content = m.get("content")
            if isinstance(content, list):
                # OpenAI content parts: keep the text parts, in order.
                texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
                content = "".join(t for t in texts if isinstance(t, str))
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise InvalidRequest(
                    f"messages[{i}].content must be a string or an array of text parts",
                    param=f"messages[{i}].content",
                )
            messages.append(ChatMessage(role=str(role), content=content))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise InvalidRequest("'max_tokens' must be a positive integer", param="max_tokens")
        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
        ):
            raise InvalidRequest("'temperature' must be a number between 0 and 2", param="temperature")
        stop = body.get("stop")
        stops: tuple[str, ...]
        if stop is None:
            stops = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean", param="stream")
        for where, text in (("model", model), *((f"messages[{i}].content", m.content) for i, m in enumerate(messages))):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"{where} is not valid Unicode text (a lone surrogate)", param=where) from None
        known = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stop", "stream"}
        extra = {k: v for k, v in body.items() if k not in known}
        return cls(
            model=model,
            messages=tuple(messages),
            max_tokens=max_tokens,
            temperature=None if temperature is None else float(temperature),
            stop=stops,
            stream=stream,
            extra=extra,
        )


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@attrs.frozen
class ResponseMetadata:
    """Filled in by the router: which key served the request, at what cost, and why."""

    key_used: str
    provider: str
    cost: Decimal
    attempts: int
    latency_s: float
    decision_id: str
    decision: Any = None  # a RoutingDecision; typed loosely to keep this module dependency-free
    request_id: str = ""
    client: str | None = None  # who sent the request (the proxy's client token id), for attribution


@attrs.frozen
class SystemResponse:
    content: str
    model: str
    usage: Usage
    finish_reason: str | None
    # Provider fields that have no place in the normalised shape (id, system_fingerprint, ...).
    raw: Mapping[str, Any] = attrs.field(factory=dict)
    metadata: ResponseMetadata | None = None


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk of a stream carries `finish_reason` and/or `usage`."""

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict)
