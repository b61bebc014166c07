"""The system's own request and response values, independent of any provider's wire format.

A `RequestIntent` is an OpenAI-style chat request (the lingua franca callers already speak);
adapters translate it to their provider and normalise the answer back to a `SystemResponse`. A request
that came in Anthropic's Messages format (`from_anthropic`) also carries its content blocks, system blocks
and tools (`anthropic`), so the Anthropic adapter can send it on as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from apikeyrouter.domain.anthropic_request import AnthropicParts, parse_anthropic
from apikeyrouter.errors import InvalidRequest

__all__ = [
    "AnthropicParts",
    "ChatMessage",
    "RequestIntent",
    "ResponseMetadata",
    "StreamChunk",
    "SystemResponse",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@attrs.frozen
class ChatMessage:
    """`content` is the message's text (what estimates count and what translations carry). `wire` is the
    OpenAI-shaped message exactly as the client sent it (assistant `tool_calls`, a tool result's
    `tool_call_id`, content parts), for an OpenAI-kind upstream to receive unchanged; None when the message
    was not written in that shape. It takes no part in equality (the token counts' cache keys on the text)."""

    role: str
    content: str
    wire: Mapping[str, Any] | None = attrs.field(default=None, eq=False, repr=False)


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
    # Set by `from_anthropic`: the Messages API's own parts (blocks, system blocks, tools), as sent.
    anthropic: AnthropicParts | None = None
    # The caller's labels (the proxy's `x-apikeyrouter-tags`): policies match on them; never sent upstream.
    tags: frozenset[str] = frozenset()

    @classmethod
    def from_anthropic(cls, body: Any, *, count_only: bool = False) -> RequestIntent:
        """Validate an Anthropic Messages body; raises `InvalidRequest` naming the field (`messages.0.role`).

        `messages` is its text (a tool call as its input's JSON, a tool result as its text): what an
        OpenAI-kind adapter sends and what estimates count. `count_only`: a count_tokens body (no max_tokens)."""
        parsed = parse_anthropic(body, count_only=count_only)
        return cls(
            model=parsed.model,
            messages=tuple(ChatMessage(role=r, content=c) for r, c in parsed.flat),
            max_tokens=parsed.max_tokens,
            temperature=parsed.temperature,
            stop=parsed.stop,
            stream=parsed.stream,
            extra=parsed.extra,
            anthropic=parsed.parts,
        )

    @classmethod
    def from_openai(cls, body: Mapping[str, Any]) -> RequestIntent:
        """Validate an OpenAI chat-completions body; raises `InvalidRequest` naming the problem.

        Every field read here or by an adapter is type-checked (`_PASSTHROUGH` lists the optional ones
        passed on in `extra`); fields we do not know pass through untouched for the provider to judge."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
        messages = _messages(body.get("messages"))
        max_tokens = _max_tokens(body)
        temperature = body.get("temperature")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
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
        _check_unicode("model", model)
        for i, m in enumerate(messages):
            _check_unicode(i, m.content)
        extra = {k: v for k, v in body.items() if k not in _KNOWN}
        if extra:
            _check_passthrough(extra)
        return cls(
            model=model,
            messages=tuple(messages),
            max_tokens=max_tokens,
            temperature=None if temperature is None else float(temperature),
            stop=stops,
            stream=stream,
            extra=extra,
        )


_KNOWN = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stop", "stream"})


def _check_unicode(where: str | int, text: str) -> None:
    """Text that cannot be sent (a lone surrogate): `where` is a field name or a message's position."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        name = where if isinstance(where, str) else f"messages[{where}].content"
        raise InvalidRequest(f"{name} is not valid Unicode text (a lone surrogate)", param=name) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# Optional fields that the router or an adapter reads, or that OpenAI defines with one type: (check, what).
_PASSTHROUGH: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "stream_options": (lambda v: isinstance(v, Mapping), "an object"),
    "tools": (lambda v: isinstance(v, list), "an array of objects"),
    "tool_choice": (lambda v: isinstance(v, str | Mapping), "a string or an object"),
    "top_p": (_is_number, "a number"),
    "top_k": (_is_int, "an integer"),
    "metadata": (lambda v: isinstance(v, Mapping), "an object"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "n": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "seed": (_is_int, "an integer"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "response_format": (lambda v: isinstance(v, Mapping), "an object"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "logit_bias": (lambda v: isinstance(v, Mapping), "an object"),
}


def _check_passthrough(extra: Mapping[str, Any]) -> None:
    if any(name in _PASSTHROUGH for name in extra):  # most bodies carry none of them: nothing to walk
        for name, (check, what) in _PASSTHROUGH.items():
            value = extra.get(name)
            if value is not None and not check(value):
                raise InvalidRequest(f"'{name}' must be {what}", param=name)
    tools = extra.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise InvalidRequest(f"tools[{i}] must be an object", param=f"tools[{i}]")
    options = extra.get("stream_options")
    usage = options.get("include_usage") if isinstance(options, Mapping) else None
    if usage is not None and not isinstance(usage, bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean", param="stream_options.include_usage")


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """`max_completion_tokens` (OpenAI's current name) wins over `max_tokens`; the error names the one given."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is not None and not (_is_int(value) and value >= 1):
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return value


def _messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
    messages: list[ChatMessage] = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping):
            raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object is not hashable
            raise InvalidRequest(f"messages[{i}].role must be one of {sorted(_ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):
            content = _text_parts(content, f"messages[{i}].content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequest(
                f"messages[{i}].content must be a string or an array of text parts", param=f"messages[{i}].content"
            )
        messages.append(ChatMessage(role=str(role), content=content, wire=m))
    return messages


def _text_parts(parts: list[Any], where: str) -> str:
    """OpenAI content parts: the text parts' text, in order; other kinds (images, audio) are not carried."""
    texts: list[str] = []
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping):
            raise InvalidRequest(f"{where}[{j}] must be an object", param=f"{where}[{j}]")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise InvalidRequest(f"{where}[{j}].type must be a string", param=f"{where}[{j}].type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}[{j}].text must be a string", param=f"{where}[{j}].text")
            texts.append(text)
    return "".join(texts)


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    # True: not what the provider reported but our own figure (its report was missing or impossible; an
    # impossible one is replaced by the request's worst case, so what was held is what is charged).
    estimated: bool = attrs.field(default=False, kw_only=True)

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
class ToolCall:
    """A tool the model asks the caller to run: the provider's call id, the tool, its input as JSON text."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class ToolCallDelta:
    """A piece of a streamed tool call. `index` counts the answer's tool calls from 0; the first piece of a
    call carries its `id` and `name`, the rest pieces of its input's JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@attrs.frozen
class SystemResponse:
    content: str
    model: str
    usage: Usage
    finish_reason: str | None
    # Provider fields that have no place in the normalised shape (id, system_fingerprint, ...).
    raw: Mapping[str, Any] = attrs.field(factory=dict)
    metadata: ResponseMetadata | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk of a stream carries `finish_reason` and/or `usage`."""

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict)
    tool_call: ToolCallDelta | None = None
