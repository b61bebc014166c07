"""Anthropic Messages API, translated to and from the system's OpenAI-style intent.

Request translation (intent -> Messages API):
- `system`/`developer` messages are joined (blank line between) into the top-level `system` string;
- `tool` messages become user turns (the intent carries text only); consecutive turns of the same role
  are merged, because the API expects user/assistant alternation;
- `max_tokens` is required by Anthropic: when the caller gave none we send `default_max_tokens`
  (1024 unless configured) and budget for exactly that;
- `temperature` is clamped to Anthropic's 0..1 range (OpenAI allows up to 2);
- `stop` becomes `stop_sequences`; from `extra`, `top_p`, `top_k`, `metadata` pass through and OpenAI's
  `user` becomes `metadata.user_id`. Other OpenAI-only parameters are dropped.

An intent built by `RequestIntent.from_anthropic` (the proxy's `/v1/messages`) carries the Messages API's
own parts: its messages (content blocks: images, tool_use, tool_result), system (string or blocks), tools
and tool_choice are sent as the caller wrote them instead of the translation above; temperature, stop,
max_tokens, top_p, top_k and metadata as above.

Response translation: text blocks are joined; tool_use blocks become `tool_calls` (their input as JSON
text); `stop_reason` maps to OpenAI's `finish_reason` (end_turn/stop_sequence -> stop, max_tokens -> length,
tool_use -> tool_calls, refusal -> content_filter) and is kept in `raw`; usage is `input_tokens` /
`output_tokens` (cache token counts stay in `raw["usage"]`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from apikeyrouter.adapters._http import JSONChatAdapter, SSEEvent, error_fields, parse_json
from apikeyrouter.adapters._stream import SSEStream
from apikeyrouter.adapters.classify import DEFAULT_RULES, ClassifyRule, ErrorInfo, classify
from apikeyrouter.adapters.headers import parse_anthropic_headers
from apikeyrouter.adapters.pricing import ModelPrice
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import (
    AnthropicParts,
    RequestIntent,
    StreamChunk,
    SystemResponse,
    ToolCall,
    ToolCallDelta,
)
from apikeyrouter.domain.signal import Capabilities, QuotaSignal
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.secret import Secret

__all__ = ["STOP_REASONS", "AnthropicAdapter"]

STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

_PASSTHROUGH = ("top_p", "top_k", "metadata")


def _finish(reason: Any) -> str | None:
    if not isinstance(reason, str):
        return None
    return STOP_REASONS.get(reason, reason)


class AnthropicAdapter(JSONChatAdapter):
    kind = "anthropic"
    endpoint = "/messages"

    def __init__(
        self,
        *,
        base_url: str = "https://api.anthropic.com/v1",
        anthropic_version: str = "2023-06-01",
        models: Iterable[str] = (),
        max_context: int | None = None,
        default_max_tokens: int = 1024,
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
        prices: Mapping[str, ModelPrice | tuple[str, str]] | None = None,
        rules: Sequence[ClassifyRule] = DEFAULT_RULES,
        provider: str = "anthropic",
    ) -> None:
        super().__init__(
            provider=provider,
            timeout=timeout,
            limits=limits,
            headers=headers,
            prices=prices,
            rules=rules,
            default_max_output=default_max_tokens,
        )
        self.base_url = base_url.rstrip("/")
        self.anthropic_version = anthropic_version
        self.capabilities = Capabilities(models=frozenset(models), streaming=True, max_context=max_context)

    def signal_from(self, headers: Mapping[str, str]) -> QuotaSignal:
        return parse_anthropic_headers(headers)

    def _auth(self, secret: Secret) -> dict[str, str]:
        return {
            "x-api-key": secret.reveal(),
            "anthropic-version": self.anthropic_version,
            "accept": "application/json",
        }

    def body(self, intent: RequestIntent, *, stream: bool) -> dict[str, Any]:
        native = intent.anthropic
        body: dict[str, Any] = self._native(native) if native is not None else self._translated(intent)
        body["model"] = intent.model
        body["max_tokens"] = self.max_output(intent)
        if intent.temperature is not None:
            body["temperature"] = min(1.0, max(0.0, intent.temperature))
        if intent.stop:
            body["stop_sequences"] = list(intent.stop)
        for name in _PASSTHROUGH:
            if name in intent.extra:
                body[name] = intent.extra[name]
        user = intent.extra.get("user")
        if isinstance(user, str) and "metadata" not in body:
            body["metadata"] = {"user_id": user}
        if stream:
            body["stream"] = True
        return body

    @staticmethod
    def _native(parts: AnthropicParts) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": list(parts.messages)}
        if parts.system is not None:
            body["system"] = parts.system if isinstance(parts.system, str) else list(parts.system)
        if parts.tools:
            body["tools"] = list(parts.tools)
        if parts.tool_choice is not None:
            body["tool_choice"] = parts.tool_choice
        return body

    @staticmethod
    def _translated(intent: RequestIntent) -> dict[str, Any]:
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for m in intent.messages:
            if m.role in ("system", "developer"):
                system.append(m.content)
                continue
            role = "assistant" if m.role == "assistant" else "user"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n\n" + m.content
            else:
                turns.append({"role": role, "content": m.content})
        if not turns:
            raise InvalidRequest("Anthropic needs at least one user or assistant message", param="messages")
        body: dict[str, Any] = {"messages": turns}
        if system:
            body["system"] = "\n\n".join(system)
        return body

    def normalise(
        self, data: Mapping[str, Any], intent: RequestIntent, secret: Secret, signal: QuotaSignal
    ) -> SystemResponse:
        if data.get("type") == "error":
            # A 200 carrying an error body: classify it like the status-code path would.
            etype, code, message = error_fields(data, b"")
            info = ErrorInfo(status=None, error_type=etype, code=code, message=message, provider=self.kind)
            err = self.malformed(message, secret, signal=signal)
            err.failure = classify(info, self.rules)
            raise err
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self.malformed("the message has no content array", secret, signal=signal)
        texts = [
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        usage_raw = data.get("usage")
        if not isinstance(usage_raw, dict):
            raise self.malformed("the message has no usage", secret, signal=signal)
        usage = self.reported_usage(intent, usage_raw.get("input_tokens"), usage_raw.get("output_tokens"))
        raw: dict[str, Any] = {k: data[k] for k in ("id", "type", "role", "stop_reason", "stop_sequence") if k in data}
        raw["usage"] = usage_raw
        tool_uses = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
        if tool_uses:
            raw["tool_use"] = tool_uses
        model = data.get("model")
        return SystemResponse(
            content="".join(texts),
            model=model if isinstance(model, str) else intent.model,
            usage=usage,
            finish_reason=_finish(data.get("stop_reason")),
            raw=raw,
            tool_calls=tuple(_tool_call(b) for b in tool_uses),
        )

    def open_stream(
        self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret
    ) -> AbstractAsyncContextManager[_AnthropicStream]:
        return self.chat_stream(client, intent, secret, _AnthropicStream)


def _tool_call(block: Mapping[str, Any]) -> ToolCall:
    call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
    return ToolCall(
        id=call_id if isinstance(call_id, str) else "",
        name=name if isinstance(name, str) else "",
        arguments=json.dumps(tool_input if isinstance(tool_input, Mapping) else {}, ensure_ascii=False),
    )


class _AnthropicStream(SSEStream):
    """message_start (model, input usage) -> content_block_start/delta/stop ... -> message_delta
    (stop_reason, cumulative output usage) -> message_stop; `ping` anywhere; `error` anywhere ends it.

    Text deltas become `delta`s; a tool_use block becomes `tool_call` pieces (its start: id and name; each
    input_json_delta: a piece of its input). Content chunks carry the usage so far (input from message_start),
    the message_delta chunk the upstream's stop_reason and stop_sequence in `raw`."""

    _model: str | None = None
    _tools: dict[int, int] | None = None  # content block index -> tool call index

    def _chunk(self, *, delta: str = "", tool_call: ToolCallDelta | None = None) -> list[StreamChunk]:
        self.note_delta()
        return [StreamChunk(delta=delta, model=self._model, usage=self.usage, tool_call=tool_call)]

    def _block_start(self, data: Mapping[str, Any]) -> list[StreamChunk]:
        block, index = data.get("content_block"), data.get("index")
        if not (isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(index, int)):
            return []
        tools = self._tools if self._tools is not None else {}
        self._tools = tools
        tools[index] = len(tools)
        call_id, name = block.get("id"), block.get("name")
        start = ToolCallDelta(
            index=tools[index],
            id=call_id if isinstance(call_id, str) else "",
            name=name if isinstance(name, str) else "",
        )
        return self._chunk(tool_call=start)

    def _block_delta(self, data: Mapping[str, Any]) -> list[StreamChunk]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return self._chunk(delta=text) if isinstance(text, str) and text else []
        if kind == "input_json_delta":
            piece, index = delta.get("partial_json"), data.get("index")
            call = (self._tools or {}).get(index) if isinstance(index, int) else None
            if isinstance(piece, str) and piece and call is not None:
                return self._chunk(tool_call=ToolCallDelta(index=call, arguments=piece))
        return []

    def on_event(self, event: SSEEvent) -> list[StreamChunk]:
        data = parse_json(event.data)
        if not isinstance(data, dict):
            raise self.interrupted(f"undecodable stream event {event.data[:120]!r}", FailureClass.SERVER_ERROR)
        kind = data.get("type", event.event)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                model = message.get("model")
                self._model = model if isinstance(model, str) else None
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.note_usage(usage.get("input_tokens"), usage.get("output_tokens"), need_input=True)
            return []
        if kind == "message_delta":
            delta = data.get("delta")
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts; input only when the provider restates it.
                self.note_usage(usage.get("input_tokens"), usage.get("output_tokens"), need_output=True)
            finish = _finish(delta.get("stop_reason")) if isinstance(delta, dict) else None
            raw = dict(delta) if isinstance(delta, dict) else {}
            return [StreamChunk(finish_reason=finish, usage=self.usage, model=self._model, raw=raw)]
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            etype, code, message = error_fields(data, event.data.encode())
            info = ErrorInfo(status=None, error_type=etype, code=code, message=message, provider="anthropic")
            raise self.interrupted(message, classify(info, self.adapter.rules), code=code, error_type=etype)
        # ping, content_block_stop, and event types added after this was written: nothing to say.
        return []
