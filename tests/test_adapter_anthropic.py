"""AnthropicAdapter against httpx.MockTransport with bodies, headers and events shaped like Anthropic's."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from apikeyrouter.adapters import AnthropicAdapter
from apikeyrouter.domain.failures import FailureClass as F
from apikeyrouter.domain.request import ChatMessage, RequestIntent, Usage
from apikeyrouter.errors import InvalidRequest, MalformedResponse, StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, mock_client, split_every, sse_response

KEY = Secret("sk-ant-api03-TESTKEYabcdefghijklmnop")
adapter = AnthropicAdapter(base_url="https://anthropic.example.test/v1")
HEADERS = {
    "date": "Thu, 01 May 2025 12:00:00 GMT",
    "request-id": "req_018EeWyXxfu5pfWkrYcMdjWG",
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2025-05-01T12:00:02Z",
    "anthropic-ratelimit-tokens-limit": "50000",
    "anthropic-ratelimit-tokens-remaining": "49000",
    "anthropic-ratelimit-tokens-reset": "2025-05-01T12:00:12Z",
}
MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! "}, {"type": "text", "text": "How can I help?"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 0},
}


def claude_intent(**kw: Any) -> RequestIntent:
    messages = (
        ChatMessage("system", "Be brief."),
        ChatMessage("developer", "Answer in English."),
        ChatMessage("user", "Hello"),
        ChatMessage("user", "Are you there?"),
        ChatMessage("assistant", "Yes."),
        ChatMessage("tool", "tool output"),
    )
    return RequestIntent(model="claude-sonnet-4-5", messages=messages, **kw)


async def test_translation_both_ways() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, MESSAGE, HEADERS)

    intent = claude_intent(temperature=1.7, stop=("END",), extra={"user": "u-1", "top_p": 0.9, "seed": 3})
    async with mock_client(handler) as client:
        result = await adapter.complete(client, intent, KEY)
    req = seen[0]
    assert str(req.url) == "https://anthropic.example.test/v1/messages"
    assert req.headers["x-api-key"] == KEY.reveal() and req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert json.loads(req.content) == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "Hello\n\nAre you there?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "tool output"},
        ],
        "max_tokens": 1024,  # Anthropic requires it; our documented default
        "temperature": 1.0,  # clamped to Anthropic's range
        "stop_sequences": ["END"],
        "top_p": 0.9,
        "metadata": {"user_id": "u-1"},
    }
    r = result.response
    assert r.content == "Hi! How can I help?" and r.finish_reason == "stop"
    assert r.usage == Usage(12, 9) and r.model == "claude-sonnet-4-5-20250929"
    assert r.raw["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    s = result.signal
    assert (s.limit_requests, s.remaining_requests, s.reset_requests_s) == (50, 49, 2.0)
    assert (s.limit_tokens, s.remaining_tokens, s.reset_tokens_s) == (50000, 49000, 12.0)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls")],
)
async def test_stop_reasons(reason: str, finish: str) -> None:
    body = {**MESSAGE, "stop_reason": reason}
    async with mock_client(lambda r: json_response(200, body)) as client:
        result = await adapter.complete(client, claude_intent(max_tokens=5), KEY)
    assert result.response.finish_reason == finish


def test_only_system_messages_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        adapter.body(RequestIntent(model="claude-3-5-haiku", messages=(ChatMessage("system", "x"),)), stream=False)


def _err(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


FAILURES = [
    (529, _err("overloaded_error", "Overloaded"), {}, F.OVERLOADED),
    (
        429,
        _err("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
        {"retry-after": "13", **HEADERS, "anthropic-ratelimit-tokens-remaining": "0"},
        F.RATE_LIMITED,
    ),
    (401, _err("authentication_error", "invalid x-api-key"), {}, F.AUTH_INVALID),
    (
        403,
        _err("permission_error", "Your API key does not have permission to use the specified resource."),
        {},
        F.PERMISSION,
    ),
    (400, _err("invalid_request_error", "prompt is too long: 215378 tokens > 200000 maximum"), {}, F.CONTEXT_LENGTH),
    (
        400,
        _err(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to "
            "Plans & Billing to upgrade or purchase credits.",
        ),
        {},
        F.QUOTA_EXHAUSTED,
    ),
    (402, _err("billing_error", "There is an issue with your payment method."), {}, F.QUOTA_EXHAUSTED),
    (400, _err("invalid_request_error", "messages: roles must alternate"), {}, F.BAD_REQUEST),
    (404, _err("not_found_error", "model: claude-9"), {}, F.BAD_REQUEST),
    (413, _err("request_too_large", "Request exceeds the maximum allowed number of bytes."), {}, F.BAD_REQUEST),
    (500, _err("api_error", "Internal server error"), {}, F.SERVER_ERROR),
]


@pytest.mark.parametrize(("status", "body", "headers", "failure"), FAILURES)
async def test_failures_are_classified(status: int, body: Any, headers: dict[str, str], failure: F) -> None:
    async with mock_client(lambda r: json_response(status, body, headers)) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, claude_intent(), KEY)
    err = info.value
    assert err.failure is failure and err.status == status and err.provider == "anthropic"
    assert err.error_type == body["error"]["type"]
    if failure is F.RATE_LIMITED:
        assert err.retry_after == 13.0
        assert err.signal is not None and err.signal.remaining_tokens == 0 and err.signal.reset_tokens_s == 12.0


async def test_malformed_message() -> None:
    for body in ({"type": "message", "content": "nope"}, {"type": "message", "content": []}):
        async with mock_client(lambda r, b=body: json_response(200, b)) as client:
            with pytest.raises(MalformedResponse):
                await adapter.complete(client, claude_intent(), KEY)


def _events(error_at: int | None = None, stop: bool = True) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    }
    seq: list[tuple[str, dict[str, Any]]] = [
        ("message_start", start),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " 世界"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    if not stop:
        seq = seq[:-1]
    out = b""
    for i, (name, data) in enumerate(seq):
        if i == error_at:
            data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            name = "error"
        out += f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        if i == error_at:
            break
    return out


@pytest.mark.parametrize("size", [1, 5, 13, 100_000])
async def test_stream(size: int) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return sse_response(split_every(_events(), size), HEADERS)

    async with mock_client(handler) as c, adapter.open_stream(c, claude_intent(max_tokens=15), KEY) as stream:
        assert stream.signal.remaining_requests == 49
        chunks = [ch async for ch in stream]
    assert seen[0]["stream"] is True and seen[0]["max_tokens"] == 15
    assert "".join(ch.delta for ch in chunks) == "Hello 世界"
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(25, 15)
    assert stream.usage == Usage(25, 15)


async def test_error_event_mid_stream() -> None:
    async with (
        mock_client(lambda r: sse_response([_events(error_at=4)])) as c,
        adapter.open_stream(c, claude_intent(), KEY) as stream,
    ):
        got = []
        with pytest.raises(StreamInterrupted) as info:
            async for ch in stream:
                got.append(ch.delta)
    assert got == ["Hello"]
    assert info.value.failure is F.OVERLOADED and info.value.error_type == "overloaded_error"
    assert stream.usage == Usage(25, 1)  # what message_start reported, before any message_delta


async def test_stream_without_message_stop_is_interrupted() -> None:
    async with (
        mock_client(lambda r: sse_response([_events(stop=False)])) as c,
        adapter.open_stream(c, claude_intent(), KEY) as stream,
    ):
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
    assert info.value.failure is F.CONNECTION


async def test_read_timeout_mid_stream() -> None:
    body = _events()[:300]
    async with (
        mock_client(lambda r: sse_response([body], fail_with=httpx.ReadTimeout("slow"))) as c,
        adapter.open_stream(c, claude_intent(), KEY) as stream,
    ):
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
    assert info.value.failure is F.TIMEOUT and isinstance(info.value.__cause__, httpx.ReadTimeout)
