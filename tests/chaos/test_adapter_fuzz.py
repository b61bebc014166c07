"""Any answer an upstream can give (status, headers, body), fed to every adapter, complete and streamed: the
adapter returns a result or raises `UpstreamError` (its subclasses included), never anything else."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apikeyrouter.adapters import AnthropicAdapter, OpenAIAdapter
from apikeyrouter.adapters.generic import GenericHTTPAdapter
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import ChunkedBody, mock_client

KEY = Secret("sk-chaos-fuzz-Jf5Wq8Ze2Hs9Ua4Mk7Xc")
ADAPTERS = {
    "openai": OpenAIAdapter(base_url="http://upstream.test/v1"),
    "anthropic": AnthropicAdapter(base_url="http://upstream.test/v1"),
    "generic": GenericHTTPAdapter(
        url="http://upstream.test/run",
        content_path="choices.0.message.content",
        input_tokens_path="usage.prompt_tokens",
        output_tokens_path="usage.completion_tokens",
        model_path="model",
        finish_reason_path="choices.0.finish_reason",
        quota_headers={"x-remaining": "remaining_requests", "x-reset": "reset_requests_s"},
    ),
}
INTENTS = {
    "openai": RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),), max_tokens=8),
    "anthropic": RequestIntent(model="claude-sonnet-4-5", messages=(ChatMessage("user", "hi"),), max_tokens=8),
    "generic": RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),), max_tokens=8),
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Bodies shaped like what the providers send, with any value anywhere, next to plain noise.
FIELDS = [
    "choices",
    "usage",
    "message",
    "content",
    "delta",
    "type",
    "model",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "finish_reason",
    "stop_reason",
    "text",
    "index",
]
shaped = st.recursive(
    json_values, lambda inner: st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5) | st.lists(inner, max_size=3)
)
bodies = st.one_of(
    shaped.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"", b"null", b"[" * 50_000, b'{"choices": [{"message": {"content": "x"}}]}']),
)
events = st.one_of(
    shaped.map(lambda v: b"data: " + json.dumps(v).encode() + b"\n\n"),
    st.sampled_from([b"data: [DONE]\n\n", b"event: message_stop\ndata: {}\n\n", b": ping\n\n", b"\r\n"]),
    st.tuples(st.sampled_from(["message_start", "content_block_delta", "message_delta", "error"]), shaped).map(
        lambda p: f"event: {p[0]}\ndata: {json.dumps(p[1])}\n\n".encode()
    ),
    st.binary(max_size=60),
)
HEADER_NAMES = [
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "retry-after",
    "retry-after-ms",
    "anthropic-ratelimit-requests-reset",
    "date",
    "x-remaining",
    "x-reset",
    "content-encoding",
    "content-type",
    "anthropic-ratelimit-tokens-remaining",
]
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.sampled_from(["1e999", "-1", "nan", "gzip", "text/event-stream", "application/json", "9999-12-31T23:59:59Z"]),
)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5)
statuses = st.one_of(
    st.sampled_from([200, 200, 200, 400, 401, 403, 404, 413, 429, 500, 503, 529]), st.integers(100, 999)
)


def answer(status: int, head: dict[str, str], parts: list[bytes], fail: bool) -> httpx.Response:
    failure = httpx.ReadError("connection reset by peer") if fail else None
    return httpx.Response(status, headers=head, stream=ChunkedBody(parts, failure))


async def exercise(kind: str, response: httpx.Response, streaming: bool) -> None:
    adapter, intent = ADAPTERS[kind], INTENTS[kind]
    async with mock_client(lambda request: response) as client:
        try:
            if streaming and kind != "generic":
                async with adapter.open_stream(client, intent, KEY) as stream:
                    async for _ in stream:
                        pass
            else:
                await adapter.complete(client, intent, KEY)
        except UpstreamError:
            pass  # typed: the request path knows what to do with it


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    kind=st.sampled_from(list(ADAPTERS)),
    status=statuses,
    head=headers,
    body=bodies,
    split=st.integers(1, 64),
    fail=st.booleans(),
)
async def test_any_answer_to_a_completion_is_a_result_or_an_upstream_error(
    kind: str, status: int, head: dict[str, str], body: bytes, split: int, fail: bool
) -> None:
    parts = [body[i : i + split] for i in range(0, len(body), split)] or [b""]
    await exercise(kind, answer(status, head, parts, fail), streaming=False)


@FUZZ
@given(
    kind=st.sampled_from(["openai", "anthropic"]),
    status=statuses,
    head=headers,
    parts=st.lists(events, max_size=8),
    sse=st.booleans(),
    fail=st.booleans(),
)
async def test_any_answer_to_a_stream_is_chunks_or_an_upstream_error(
    kind: str, status: int, head: dict[str, str], parts: list[bytes], sse: bool, fail: bool
) -> None:
    if sse:
        head = {**head, "content-type": "text/event-stream"}
    await exercise(kind, answer(status, head, parts, fail), streaming=True)
