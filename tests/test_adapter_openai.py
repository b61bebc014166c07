"""OpenAIAdapter against httpx.MockTransport with bodies and headers shaped like OpenAI's."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.domain.failures import FailureClass as F
from apikeyrouter.domain.request import RequestIntent, Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.errors import MalformedResponse, StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, make_intent, mock_client, split_every, sse_response


@pytest.fixture
def intent() -> RequestIntent:
    return make_intent()


KEY = Secret("sk-proj-TESTKEY0123456789abcdef")
RATE_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "1999950",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "1s",
}
COMPLETION = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi!", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 3,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}

adapter = OpenAIAdapter(base_url="https://api.example.test/v1")


async def test_complete_sends_the_documented_request_and_normalises(intent: RequestIntent) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, COMPLETION, RATE_HEADERS)

    async with mock_client(handler) as client:
        result = await adapter.complete(client, intent, KEY)
    request = seen[0]
    assert request.method == "POST" and str(request.url) == "https://api.example.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY.reveal()}"
    body = json.loads(request.content)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "max_tokens": 20,
        "temperature": 0.5,
        "stop": ["\n\n"],
        "stream": False,
    }
    r = result.response
    assert (r.content, r.model, r.finish_reason) == ("Hi!", "gpt-4o-mini-2024-07-18", "stop")
    assert r.usage == Usage(19, 3)
    assert r.raw["id"] == "chatcmpl-abc123" and r.raw["system_fingerprint"] == "fp_06737a9306"
    assert r.raw["created"] == 1741569952
    assert result.signal == QuotaSignal(10000, 9999, 0.006, 2000000, 1999950, 1.0)


def _err(message: str, etype: str | None, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


FAILURES = [
    (
        429,
        _err(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        {},
        F.QUOTA_EXHAUSTED,
    ),
    (
        429,
        _err(
            "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, "
            "Used 3, Requested 1. Please try again in 20s.",
            "requests",
            "rate_limit_exceeded",
        ),
        {"retry-after": "20", **RATE_HEADERS, "x-ratelimit-remaining-requests": "0"},
        F.RATE_LIMITED,
    ),
    (
        401,
        _err(
            "Incorrect API key provided: sk-proj-****cdef. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        {},
        F.AUTH_INVALID,
    ),
    (
        403,
        _err(
            "Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"
        ),
        {},
        F.PERMISSION,
    ),
    (
        400,
        _err(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        {},
        F.CONTEXT_LENGTH,
    ),
    (
        400,
        _err(
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "invalid_request_error",
            "content_filter",
            "prompt",
        ),
        {},
        F.CONTENT_POLICY,
    ),
    (
        404,
        _err(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        {},
        F.BAD_REQUEST,
    ),
    (
        400,
        _err("Invalid type for 'temperature'", "invalid_request_error", "invalid_type", "temperature"),
        {},
        F.BAD_REQUEST,
    ),
    (
        500,
        _err("The server had an error while processing your request. Sorry about that!", "server_error", None),
        {},
        F.SERVER_ERROR,
    ),
    (503, _err("The engine is currently overloaded, please try again later.", "server_error", None), {}, F.OVERLOADED),
    (502, None, {}, F.SERVER_ERROR),  # an HTML page from a proxy, not JSON
]


@pytest.mark.parametrize(("status", "body", "headers", "failure"), FAILURES)
async def test_failures_are_classified(
    status: int, body: Any, headers: dict[str, str], failure: F, intent: RequestIntent
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers={"content-type": "text/html"}, content=b"<html>Bad Gateway</html>")
        return json_response(status, body, headers)

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, intent, KEY)
    err = info.value
    assert type(err) is UpstreamError
    assert err.failure is failure and err.status == status and err.provider == "openai"
    assert err.signal is not None
    if failure is F.RATE_LIMITED:
        assert err.retry_after == 20.0 and err.signal.remaining_requests == 0
        assert err.code == "rate_limit_exceeded"
    if failure is F.AUTH_INVALID:
        assert "sk-proj" not in str(err) and "cdef" not in str(err)


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (httpx.ConnectTimeout("timed out"), F.TIMEOUT),
        (httpx.ReadTimeout("timed out"), F.TIMEOUT),
        (httpx.PoolTimeout("pool"), F.TIMEOUT),
        (httpx.ConnectError("refused"), F.CONNECTION),
        (httpx.ReadError("reset by peer"), F.CONNECTION),
        (httpx.RemoteProtocolError("server disconnected"), F.CONNECTION),
    ],
)
async def test_transport_errors_translated_once(exc: Exception, failure: F, intent: RequestIntent) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, intent, KEY)
    assert info.value.failure is failure and info.value.__cause__ is exc


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"choices": []}',
        b'{"choices": [{"message": {"content": 3}}]}',
        b'{"choices": [{"message": {"content": "x"}}]}',
        b'{"id": "chatcmpl-1", "choices": [{"mess',
    ],
)
async def test_malformed_bodies_are_typed_errors(content: bytes, intent: RequestIntent) -> None:
    async with mock_client(lambda r: httpx.Response(200, content=content, headers=RATE_HEADERS)) as client:
        with pytest.raises(MalformedResponse) as info:
            await adapter.complete(client, intent, KEY)
    assert info.value.failure is F.SERVER_ERROR
    assert info.value.signal is not None and info.value.signal.limit_requests == 10000


def _stream_body(include_usage: bool = True, error_at: int | None = None) -> bytes:
    base = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
    }
    pieces = ["Hel", "lo", " wörld", "!"]
    events: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    ]
    for p in pieces:
        events.append({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
        )
    out = b""
    for i, e in enumerate(events):
        if error_at == i:
            out += b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
            return out
        out += b"data: " + json.dumps(e).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
async def test_stream_survives_any_chunk_boundary(size: int, intent: RequestIntent) -> None:
    body = _stream_body().replace(b"\n", b"\r\n") if size == 3 else _stream_body()
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return sse_response(split_every(body, size), RATE_HEADERS)

    async with mock_client(handler) as client, adapter.open_stream(client, intent, KEY) as stream:
        assert stream.signal.remaining_requests == 9999  # known before the first chunk
        chunks = [c async for c in stream]
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert "".join(c.delta for c in chunks) == "Hello wörld!"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(9, 4)
    assert stream.usage == Usage(9, 4)


async def test_stream_cut_before_done_is_interrupted_with_partial_usage(intent: RequestIntent) -> None:
    body = _stream_body()
    cut = body[: body.index(b" w\\u00f6rld")]  # mid-event, before the usage chunk
    async with (
        mock_client(lambda r: sse_response([cut], fail_with=httpx.RemoteProtocolError("incomplete"))) as c,
        adapter.open_stream(c, intent, KEY) as stream,
    ):
        got = []
        with pytest.raises(StreamInterrupted) as info:
            async for chunk in stream:
                got.append(chunk.delta)
    assert info.value.failure is F.CONNECTION
    assert "".join(got) == "Hello"
    usage = stream.usage
    assert usage is not None and usage.output_tokens == 2 and usage.input_tokens > 0  # estimate + deltas


async def test_stream_ending_without_done_is_interrupted(intent: RequestIntent) -> None:
    body = _stream_body(include_usage=False).replace(b"data: [DONE]\n\n", b"")
    async with mock_client(lambda r: sse_response([body])) as c, adapter.open_stream(c, intent, KEY) as stream:
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
    assert info.value.failure is F.CONNECTION


async def test_error_event_mid_stream_is_classified(intent: RequestIntent) -> None:
    body = _stream_body(error_at=3)
    async with mock_client(lambda r: sse_response([body])) as c, adapter.open_stream(c, intent, KEY) as stream:
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
    assert info.value.failure is F.SERVER_ERROR and info.value.error_type == "server_error"


async def test_stream_error_status_is_raised_on_open(intent: RequestIntent) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(
            429, _err("Rate limit reached", "tokens", "rate_limit_exceeded"), {"retry-after-ms": "1500"}
        )

    async with mock_client(handler) as c:
        with pytest.raises(UpstreamError) as info:
            async with adapter.open_stream(c, intent, KEY):
                raise AssertionError("must not open")
    assert info.value.failure is F.RATE_LIMITED and info.value.retry_after == 1.5


async def test_stream_with_wrong_content_type_is_malformed(intent: RequestIntent) -> None:
    async with mock_client(lambda r: json_response(200, COMPLETION)) as c:
        with pytest.raises(MalformedResponse):
            async with adapter.open_stream(c, intent, KEY):
                raise AssertionError("must not open")


async def test_garbage_event_is_interrupted(intent: RequestIntent) -> None:
    async with (
        mock_client(lambda r: sse_response([b"data: {nope\n\n"])) as c,
        adapter.open_stream(c, intent, KEY) as stream,
    ):
        with pytest.raises(StreamInterrupted):
            async for _ in stream:
                pass


async def test_list_models() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"},
            {"id": "o3", "object": "model", "created": 2, "owned_by": "system"},
        ],
    }
    async with mock_client(lambda r: json_response(200, body)) as client:
        assert await adapter.list_models(client, KEY) == ["gpt-4o", "o3"]


def test_client_recipe() -> None:
    client = adapter.make_client()
    assert client.timeout.connect == 5.0 and client.timeout.read == 120.0
    assert client.trust_env is False
    assert adapter.kind == "openai" and adapter.capabilities.streaming
