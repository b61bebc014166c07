"""OpenAI chat completions (and any server that speaks its wire format)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from apikeyrouter.adapters._http import JSONChatAdapter, SSEEvent, error_fields, parse_json
from apikeyrouter.adapters._stream import SSEStream
from apikeyrouter.adapters.classify import DEFAULT_RULES, ClassifyRule, ErrorInfo, classify
from apikeyrouter.adapters.headers import parse_openai_headers
from apikeyrouter.adapters.pricing import ModelPrice
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import RequestIntent, StreamChunk, SystemResponse, ToolCall
from apikeyrouter.domain.signal import Capabilities, QuotaSignal
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.secret import Secret

__all__ = ["OpenAIAdapter"]

_RAW_FIELDS = ("id", "object", "created", "system_fingerprint", "service_tier")


class OpenAIAdapter(JSONChatAdapter):
    """`POST {base_url}/chat/completions` with Bearer auth; `GET {base_url}/models`.

    `models` declares what this provider serves (empty: whatever the caller asks for). `extra` parameters
    of the intent (tools, response_format, seed, user, ...) pass through untouched.
    """

    kind = "openai"
    endpoint = "/chat/completions"

    def __init__(
        self,
        *,
        base_url: str = "https://api.openai.com/v1",
        models: Iterable[str] = (),
        max_context: int | None = None,
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
        prices: Mapping[str, ModelPrice | tuple[str, str]] | None = None,
        rules: Sequence[ClassifyRule] = DEFAULT_RULES,
        provider: str = "openai",
        default_max_output: int = 4096,
    ) -> None:
        super().__init__(
            provider=provider,
            timeout=timeout,
            limits=limits,
            headers=headers,
            prices=prices,
            rules=rules,
            default_max_output=default_max_output,
        )
        self.base_url = base_url.rstrip("/")
        self.capabilities = Capabilities(models=frozenset(models), streaming=True, max_context=max_context)

    def signal_from(self, headers: Mapping[str, str]) -> QuotaSignal:
        return parse_openai_headers(headers)

    def _auth(self, secret: Secret) -> dict[str, str]:
        return {"authorization": f"Bearer {secret.reveal()}", "accept": "application/json"}

    def body(self, intent: RequestIntent, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = dict(intent.extra)
        body["model"] = intent.model
        # As the client wrote them where it did (a tool loop's `tool_calls` and `tool_call_id`, content parts).
        body["messages"] = [
            m.wire if m.wire is not None else {"role": m.role, "content": m.content} for m in intent.messages
        ]
        if intent.max_tokens is not None:
            body["max_tokens"] = intent.max_tokens
        if intent.temperature is not None:
            body["temperature"] = intent.temperature
        if intent.stop:
            body["stop"] = list(intent.stop)
        body["stream"] = stream
        if stream:
            given = body.get("stream_options") or {}
            if not isinstance(given, Mapping):  # a RequestIntent built by hand, not by from_openai
                raise InvalidRequest("'stream_options' must be an object", param="stream_options")
            options = dict(given)
            options["include_usage"] = True  # otherwise a streamed call reports no usage to bill
            body["stream_options"] = options
        else:
            body.pop("stream_options", None)
        return body

    def normalise(
        self, data: Mapping[str, Any], intent: RequestIntent, secret: Secret, signal: QuotaSignal
    ) -> SystemResponse:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.malformed("no choices in the completion", secret, signal=signal)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self.malformed("choices[0].message is missing", secret, signal=signal)
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise self.malformed("choices[0].message.content is not a string", secret, signal=signal)
        reported = data.get("usage")
        if not isinstance(reported, dict):
            raise self.malformed("the completion has no usage", secret, signal=signal)
        usage = self.reported_usage(intent, reported.get("prompt_tokens"), reported.get("completion_tokens"))
        raw: dict[str, Any] = {k: data[k] for k in _RAW_FIELDS if k in data}
        for extra in ("tool_calls", "refusal", "function_call"):
            if message.get(extra) is not None:
                raw[extra] = message[extra]
        raw["usage"] = reported
        model = data.get("model")
        finish = choice.get("finish_reason")
        return SystemResponse(
            content=content,
            model=model if isinstance(model, str) else intent.model,
            usage=usage,
            finish_reason=finish if isinstance(finish, str) else None,
            raw=raw,
            tool_calls=_tool_calls(message.get("tool_calls")),
        )

    def open_stream(
        self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret
    ) -> AbstractAsyncContextManager[_OpenAIStream]:
        return self.chat_stream(client, intent, secret, _OpenAIStream)

    async def list_models(self, client: httpx.AsyncClient, secret: Secret) -> list[str]:
        async with self.exchange(
            client, "GET", f"{self.base_url}/models", secret=secret, headers=self._auth(secret)
        ) as response:
            signal = self.signal_from(response.headers)
            data = await self.read_json(response, secret, signal)
        items = data.get("data")
        if not isinstance(items, list):
            raise self.malformed("models list has no data array", secret, signal=signal)
        return [m["id"] for m in items if isinstance(m, Mapping) and isinstance(m.get("id"), str)]


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """`message.tool_calls` (`[{id, type: "function", function: {name, arguments}}]`) as `ToolCall`s; entries
    of another shape are skipped (they stay in `raw`)."""
    if not isinstance(raw, list):
        return ()
    calls: list[ToolCall] = []
    for entry in raw:
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict):
            continue
        call_id, name, arguments = entry.get("id"), function.get("name"), function.get("arguments")
        calls.append(
            ToolCall(
                id=call_id if isinstance(call_id, str) else "",
                name=name if isinstance(name, str) else "",
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(calls)


class _OpenAIStream(SSEStream):
    """Chunks carry `choices[0].delta.content`; `finish_reason` arrives on the last choice chunk, usage on a
    trailing chunk with empty `choices`, then `data: [DONE]`. An `{"error": ...}` payload mid-stream is a
    classified interruption."""

    def on_event(self, event: SSEEvent) -> list[StreamChunk]:
        if event.data.strip() == "[DONE]":
            self.finished = True
            return []
        data = parse_json(event.data)
        if not isinstance(data, dict):
            raise self.interrupted(f"undecodable stream event {event.data[:120]!r}", failure=FailureClass.SERVER_ERROR)
        if "error" in data:
            etype, code, message = error_fields(data, event.data.encode())
            info = ErrorInfo(status=None, error_type=etype, code=code, message=message, provider="openai")
            raise self.interrupted(message, classify(info, self.adapter.rules), code=code, error_type=etype)
        model = data.get("model") if isinstance(data.get("model"), str) else None
        chunks: list[StreamChunk] = []
        reported = data.get("usage")
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            finish = choice.get("finish_reason")
            if isinstance(text, str) and text:
                self.note_delta()
            if (isinstance(text, str) and text) or isinstance(finish, str):
                chunks.append(
                    StreamChunk(
                        delta=text if isinstance(text, str) else "",
                        finish_reason=finish if isinstance(finish, str) else None,
                        model=model,
                        raw={"id": data.get("id")} if "id" in data else {},
                    )
                )
        if isinstance(reported, dict):
            self.note_usage(
                reported.get("prompt_tokens"), reported.get("completion_tokens"), need_input=True, need_output=True
            )
            chunks.append(StreamChunk(usage=self.usage, model=model))
        return chunks
