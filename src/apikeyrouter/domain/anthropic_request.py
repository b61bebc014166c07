"""An Anthropic Messages API body, validated: what `RequestIntent.from_anthropic` is built from.

The intent's own fields (model, text messages, max_tokens, temperature, stop, stream) hold the request as
every adapter understands it; `AnthropicParts` keeps what only the Messages API can say (content blocks:
images, tool_use, tool_result; system blocks; tool definitions and tool_choice), so the Anthropic adapter
sends the request upstream as the caller wrote it. The text messages are a flattening of the blocks (text,
a tool call's input as JSON, a tool result's text): what a text-only provider gets and what token
estimates count.

Every field read here or by the adapter is type-checked; a wrong type raises `InvalidRequest` whose
`param` names it the way Anthropic does (`messages.0.content.1.text`). Block types not listed below pass
through untouched (their `type` must be a string): the provider judges them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from apikeyrouter.errors import InvalidRequest

__all__ = ["AnthropicParts", "ParsedAnthropic", "parse_anthropic"]

_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")


@attrs.frozen
class AnthropicParts:
    """What the Messages API says that the text-only intent cannot, as the caller sent it."""

    messages: tuple[Mapping[str, Any], ...]  # {"role", "content": str | [block, ...]}
    system: str | tuple[Mapping[str, Any], ...] | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Mapping[str, Any] | None = None


@attrs.frozen
class ParsedAnthropic:
    model: str
    flat: tuple[tuple[str, str], ...]  # (role, text): system first, then the turns
    max_tokens: int | None
    temperature: float | None
    stop: tuple[str, ...]
    stream: bool
    extra: Mapping[str, Any]  # top_p, top_k, metadata: passed on by the adapter
    parts: AnthropicParts


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _bad(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {what}", param=param)


def parse_anthropic(body: Any, *, count_only: bool = False) -> ParsedAnthropic:
    """Validate a Messages API body (`count_only`: a count_tokens body, which has no max_tokens)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("request body contains text that is not valid Unicode (a lone surrogate)") from None
    except (TypeError, ValueError):
        raise InvalidRequest("request body must be plain JSON values") from None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Field required: a non-empty string")
    max_tokens = None if count_only else _max_tokens(body.get("max_tokens"))
    messages, flat = _messages(body.get("messages"))
    system, system_text = _system(body.get("system"))
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"))
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 1):
        raise _bad("temperature", "must be a number between 0 and 1")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    extra = _extra(body)
    head = (("system", system_text),) if system_text else ()
    return ParsedAnthropic(
        model=model,
        flat=head + flat,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
        stop=_stop_sequences(body.get("stop_sequences")),
        stream=stream,
        extra=extra,
        parts=AnthropicParts(messages=messages, system=system, tools=tools, tool_choice=tool_choice),
    )


def _max_tokens(value: Any) -> int:
    if value is None:
        raise _bad("max_tokens", "Field required: a positive integer")
    if not (_is_int(value) and value >= 1):
        raise _bad("max_tokens", "must be a positive integer")
    return int(value)


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("stop_sequences", "must be an array of strings")
    return tuple(value)


def _extra(body: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    top_p, top_k, metadata = body.get("top_p"), body.get("top_k"), body.get("metadata")
    if top_p is not None:
        if not (_is_number(top_p) and 0 <= top_p <= 1):
            raise _bad("top_p", "must be a number between 0 and 1")
        extra["top_p"] = top_p
    if top_k is not None:
        if not (_is_int(top_k) and top_k >= 0):
            raise _bad("top_k", "must be a non-negative integer")
        extra["top_k"] = top_k
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise _bad("metadata", "must be an object")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _bad("metadata.user_id", "must be a string")
        extra["metadata"] = metadata
    return extra


def _messages(raw: Any) -> tuple[tuple[Mapping[str, Any], ...], tuple[tuple[str, str], ...]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "Field required: a non-empty array of messages")
    flat: list[tuple[str, str]] = []
    for i, m in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(m, Mapping):
            raise _bad(where, "must be an object")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", "must be 'user' or 'assistant'")
        content = m.get("content")
        if isinstance(content, str):
            flat.append((role, content))
        elif isinstance(content, list):
            flat.append((role, _blocks(content, f"{where}.content")))
        else:
            raise _bad(f"{where}.content", "must be a string or an array of content blocks")
    return tuple(raw), tuple(flat)


def _string(block: Mapping[str, Any], name: str, where: str) -> str:
    value = block.get(name)
    if not isinstance(value, str):
        raise _bad(f"{where}.{name}", "must be a string")
    return value


def _blocks(blocks: list[Any], where: str) -> str:
    """Check each content block; return the text they amount to (for text-only providers and estimates)."""
    texts: list[str] = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if not isinstance(block, Mapping):
            raise _bad(at, "must be an object")
        kind = _string(block, "type", at)
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind in ("image", "document"):
            if not isinstance(block.get("source"), Mapping):
                raise _bad(f"{at}.source", "must be an object")
        elif kind == "tool_use":
            _string(block, "id", at)
            name = _string(block, "name", at)
            tool_input = block.get("input")
            if not isinstance(tool_input, Mapping):
                raise _bad(f"{at}.input", "must be an object")
            texts.append(f"{name} {json.dumps(tool_input, ensure_ascii=False)}")
        elif kind == "tool_result":
            texts.append(_tool_result(block, at))
    return "\n\n".join(t for t in texts if t)


def _tool_result(block: Mapping[str, Any], at: str) -> str:
    _string(block, "tool_use_id", at)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{at}.is_error", "must be a boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return _blocks(content, f"{at}.content")
    raise _bad(f"{at}.content", "must be a string or an array of content blocks")


def _system(raw: Any) -> tuple[str | tuple[Mapping[str, Any], ...] | None, str]:
    if raw is None:
        return None, ""
    if isinstance(raw, str):
        return raw, raw
    if not isinstance(raw, list):
        raise _bad("system", "must be a string or an array of text blocks")
    texts: list[str] = []
    for j, block in enumerate(raw):
        at = f"system.{j}"
        if not isinstance(block, Mapping):
            raise _bad(at, "must be an object")
        if block.get("type") != "text":
            raise _bad(f"{at}.type", "must be 'text'")
        texts.append(_string(block, "text", at))
    return tuple(raw), "\n\n".join(texts)


def _tools(raw: Any) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("tools", "must be an array of tool definitions")
    for j, tool in enumerate(raw):
        at = f"tools.{j}"
        if not isinstance(tool, Mapping):
            raise _bad(at, "must be an object")
        _string(tool, "name", at)
        if tool.get("description") is not None:
            _string(tool, "description", at)
        # Custom tools need a schema; server tools ({"type": "web_search_20250305", ...}) have none.
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise _bad(f"{at}.input_schema", "must be an object")
        if schema is None and tool.get("type") in (None, "custom"):
            raise _bad(f"{at}.input_schema", "Field required: a JSON schema object")
    return tuple(raw)


def _tool_choice(raw: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _bad("tool_choice", "must be an object")
    kind = raw.get("type")
    if kind not in _TOOL_CHOICES:
        raise _bad("tool_choice.type", f"must be one of {', '.join(_TOOL_CHOICES)}")
    if kind == "tool":
        _string(raw, "name", "tool_choice")
    parallel = raw.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "must be a boolean")
    return raw
