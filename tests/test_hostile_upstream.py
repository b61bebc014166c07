"""A hostile or broken upstream: absurd quota headers, impossible usage, key material echoed back, bugs in
request building. None of it may take the process down, corrupt accounting, or leak a secret."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
import structlog.testing
import trio

from apikeyrouter.adapters import AnthropicAdapter, OpenAIAdapter, parse_duration, parse_openai_headers, scrub
from apikeyrouter.adapters.generic import GenericHTTPAdapter
from apikeyrouter.adapters.headers import MAX_RESET_S, parse_anthropic_headers, parse_retry_after
from apikeyrouter.adapters.pricing import PriceTable
from apikeyrouter.config import parse_config
from apikeyrouter.domain.cost import ModelPrice, cost
from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureAction, FailureClass, KeyEffect
from apikeyrouter.domain.request import ChatMessage, RequestIntent, Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.errors import ApiKeyRouterError, UpstreamError
from apikeyrouter.proxy._errors import http_error_for
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, mock_client, sse_response
from tests.routing_env import chat, settle_down

Handler = Callable[[httpx.Request], httpx.Response]

DAY = 86400.0


def completion(content: str = "hi", usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12} if usage is None else usage,
    }


class MockedOpenAI(OpenAIAdapter):
    """The real OpenAI adapter, its HTTP client on an in-process transport answering with `handler`."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(base_url="http://upstream.test/v1", **kwargs)
        self.handler = handler

    def make_client(self) -> httpx.AsyncClient:
        return mock_client(self.handler)


@asynccontextmanager
async def mocked_router(handler: Handler, keys: dict[str, str], **adapter: Any) -> AsyncIterator[ApiKeyRouter]:
    """A real router (supervision tree, actors) over one mocked OpenAI provider; `keys`: id -> secret."""
    async with ApiKeyRouter(parse_config({}, env={})) as router:
        await router.register_provider("openai", MockedOpenAI(handler, **adapter))
        for key_id, secret in keys.items():
            await router.register_key(secret, "openai", key_id=key_id)
        yield router


def secret_of(request: httpx.Request) -> str:
    return request.headers["authorization"].removeprefix("Bearer ")


# ------------------------------------------------------------------------------ absurd quota headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1000000000000s", MAX_RESET_S), ("1e300", MAX_RESET_S), ("99999999h", MAX_RESET_S), ("40d", MAX_RESET_S)],
)
def test_absurd_durations_are_clamped_to_31_days(text: str, seconds: float) -> None:
    assert MAX_RESET_S == 31 * DAY
    assert parse_duration(text) == seconds


def test_absurd_retry_after_is_clamped_and_nonsense_is_unknown() -> None:
    assert parse_retry_after({"retry-after": "1000000000000"}) == MAX_RESET_S
    assert parse_retry_after({"retry-after-ms": "1e18"}) == MAX_RESET_S
    far = {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT", "date": "Thu, 01 May 2025 12:00:00 GMT"}
    assert parse_retry_after(far) == MAX_RESET_S
    for nonsense in ("nan", "inf", "-inf", "-1", "1e999"):
        assert parse_retry_after({"retry-after": nonsense}) in (None, MAX_RESET_S), nonsense
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({"retry-after": "-1"}) is None


def test_absurd_openai_quota_headers_become_a_sane_signal() -> None:
    sig = parse_openai_headers(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1000000000000s",
            "x-ratelimit-limit-tokens": "1e40",  # not a count anyone has: unknown
            "x-ratelimit-remaining-tokens": "-5",
            "x-ratelimit-reset-tokens": "nan",
            "retry-after": "1000000000000",
        }
    )
    assert sig == QuotaSignal(remaining_requests=0, reset_requests_s=MAX_RESET_S, retry_after_s=MAX_RESET_S)


def test_absurd_anthropic_resets_are_clamped() -> None:
    sig = parse_anthropic_headers(
        {
            "date": "Thu, 01 May 2025 12:00:00 GMT",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "9999-12-31T23:59:59Z",
            "retry-after": "1e15",
        }
    )
    assert (sig.remaining_requests, sig.reset_requests_s, sig.retry_after_s) == (0, MAX_RESET_S, MAX_RESET_S)


@pytest.mark.parametrize("t", [1e12, 1e300, -1e12, math.inf, -math.inf, math.nan])
def test_rendering_an_absurd_instant_is_a_safe_string(t: float) -> None:
    text = render_wall(t, 0.0)
    assert isinstance(text, str) and text
    assert render_wall(3600.0 + 61.0, 0.0) == "1970-01-01T01:01:01.000Z"  # sane values render as ever


def _poison_on(poisoned: str, poison: httpx.Response) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if secret_of(request) == poisoned:
            return poison
        return json_response(200, completion(), {"x-ratelimit-remaining-requests": "100"})

    return handler


POISONS = {
    "200 with a reset in year 33715": json_response(
        200,
        completion(),
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1000000000000s"},
    ),
    "429 with Retry-After in year 33715": json_response(
        429,
        {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
        {"retry-after": "1000000000000"},
    ),
}


@pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
async def test_one_absurd_header_does_not_take_the_router_down(poison: str) -> None:
    handler = _poison_on("sk-poisoned-key-1", POISONS[poison])
    async with mocked_router(handler, {"poisoned": "sk-poisoned-key-1", "healthy": "sk-healthy-key-2"}) as router:
        served: list[str] = []
        for _ in range(30):
            with trio.fail_after(5):
                try:
                    response = await router.route(chat("hi"))
                except ApiKeyRouterError:
                    continue  # the poisoned key's own 429 may surface; the process must not die
            assert response.metadata is not None
            served.append(response.metadata.key_used)
        assert served.count("healthy") >= 28, served
        poisoned = router.key("poisoned")
        assert poisoned is not None
        assert poisoned["lifecycle"] in ("throttled", "exhausted", "active")
        state = router.get_state_summary()
        assert state  # the state summary (which renders times for humans) still works
        decisions = router.decisions(5)
        assert decisions and all(isinstance(d.get("explanation", ""), str) for d in decisions)


# ------------------------------------------------------------------------------ impossible usage

BAD_USAGE: list[tuple[Any, Any]] = [(-5, 3), (9, -1), (9.5, 3), ("9", 3), (9, 10**9), (True, 3), (9, None)]
OA_INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "Say hi"),), max_tokens=50)
CLAUDE_INTENT = RequestIntent(model="claude-sonnet-4-5", messages=(ChatMessage("user", "Say hi"),), max_tokens=50)
OA_KEY = Secret("sk-usage-canary-0000")


def _worst_case(adapter: OpenAIAdapter | AnthropicAdapter, intent: RequestIntent) -> Usage:
    est = adapter.estimate(intent)
    return Usage(est.input_tokens, est.max_output_tokens, estimated=True)


def _assert_bad_usage_logged(logs: list[dict[str, Any]], provider: str, model: str) -> None:
    bad = [e for e in logs if e["event"] == "provider_bad_usage"]
    assert len(bad) == 1, logs
    assert bad[0]["provider"] == provider and bad[0]["model"] == model
    assert "canary" not in repr(bad[0])


@pytest.mark.parametrize(("i", "o"), BAD_USAGE)
async def test_impossible_openai_usage_is_billed_as_the_worst_case(i: Any, o: Any) -> None:
    adapter = OpenAIAdapter(base_url="http://upstream.test/v1")
    usage = {"prompt_tokens": i, "completion_tokens": o}
    async with mock_client(lambda r: json_response(200, completion(usage=usage))) as client:
        with structlog.testing.capture_logs() as logs:
            result = await adapter.complete(client, OA_INTENT, OA_KEY)
    assert result.response.usage == _worst_case(adapter, OA_INTENT)
    assert adapter.cost("gpt-4o-mini", result.response.usage) == adapter.estimate(OA_INTENT).worst_case_cost > 0
    _assert_bad_usage_logged(logs, "openai", "gpt-4o-mini")


@pytest.mark.parametrize(("i", "o"), BAD_USAGE)
async def test_impossible_openai_stream_usage_is_billed_as_the_worst_case(i: Any, o: Any) -> None:
    adapter = OpenAIAdapter(base_url="http://upstream.test/v1")
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": i, "completion_tokens": o}},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    async with mock_client(lambda r: sse_response([body])) as client:
        with structlog.testing.capture_logs() as logs:
            async with adapter.open_stream(client, OA_INTENT, OA_KEY) as stream:
                chunks = [c async for c in stream]
    assert stream.usage == _worst_case(adapter, OA_INTENT)
    assert all(c.usage is None or c.usage.input_tokens >= 0 for c in chunks)
    _assert_bad_usage_logged(logs, "openai", "gpt-4o-mini")


@pytest.mark.parametrize(("i", "o"), BAD_USAGE)
async def test_impossible_anthropic_usage_is_billed_as_the_worst_case(i: Any, o: Any) -> None:
    adapter = AnthropicAdapter(base_url="http://upstream.test/v1")
    message = {
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": i, "output_tokens": o},
    }
    async with mock_client(lambda r: json_response(200, message)) as client:
        with structlog.testing.capture_logs() as logs:
            result = await adapter.complete(client, CLAUDE_INTENT, OA_KEY)
    assert result.response.usage == _worst_case(adapter, CLAUDE_INTENT)
    _assert_bad_usage_logged(logs, "anthropic", "claude-sonnet-4-5")


@pytest.mark.parametrize(("i", "o"), BAD_USAGE)
async def test_impossible_anthropic_stream_usage_is_billed_as_the_worst_case(i: Any, o: Any) -> None:
    adapter = AnthropicAdapter(base_url="http://upstream.test/v1")
    events = [
        (
            "message_start",
            {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": i}}},
        ),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": o}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    body = b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)
    async with mock_client(lambda r: sse_response([body])) as client:
        with structlog.testing.capture_logs() as logs:
            async with adapter.open_stream(client, CLAUDE_INTENT, OA_KEY) as stream:
                chunks = [c async for c in stream]
    assert chunks and stream.usage == _worst_case(adapter, CLAUDE_INTENT)
    _assert_bad_usage_logged(logs, "anthropic", "claude-sonnet-4-5")


def test_a_price_table_never_charges_a_negative_amount() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o-mini", Usage(-1_000_000, -5)) == Decimal(0)
    assert table.cost("gpt-4o-mini", Usage(1_000_000, -1_000_000)) == Decimal("0.15")
    with pytest.raises(ValueError, match=">= 0"):
        cost(ModelPrice(Decimal(1), Decimal(1)), Usage(-1, 0))  # the domain refuses instead of going negative


async def test_negative_usage_through_the_router_is_settled_at_the_worst_case() -> None:
    usage = {"prompt_tokens": -1_000_000, "completion_tokens": -1_000_000}
    handler = lambda r: json_response(200, completion(usage=usage))  # noqa: E731
    async with mocked_router(handler, {"k": "sk-usage-canary-0001"}) as router:
        for _ in range(3):
            with trio.fail_after(5):
                response = await router.route(chat("hi"))
            assert response.metadata is not None and response.metadata.cost > 0
        await settle_down(router)  # settlement is a tell: the key takes it in right after the call returns
        key = router.key("k")
        assert key is not None and Decimal(key["spend"]) > 0 and key["in_flight"] == 0


# ------------------------------------------------------------------------------ bugs while building a request


def _raises_on_build(intent: RequestIntent) -> Any:
    raise RuntimeError("body builder bug")


ADAPTER_BUGS = {
    "a header that is not ASCII": (
        OpenAIAdapter(base_url="http://upstream.test/v1", headers={"x-team": "équipe"}),
        OA_INTENT,
    ),
    "an extra that is not JSON": (
        OpenAIAdapter(base_url="http://upstream.test/v1"),
        attrs.evolve(OA_INTENT, extra={"seed": {1, 2}}),
    ),
    "a body builder that raises": (
        GenericHTTPAdapter(url="http://upstream.test/run", body_builder=_raises_on_build),
        OA_INTENT,
    ),
    "an anthropic header that is not ASCII": (
        AnthropicAdapter(base_url="http://upstream.test/v1", anthropic_version="2023-06-01\u200b"),
        CLAUDE_INTENT,
    ),
}


@pytest.mark.parametrize("bug", list(ADAPTER_BUGS), ids=list(ADAPTER_BUGS))
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_a_bug_while_building_a_request_is_a_typed_adapter_error(bug: str, streaming: bool) -> None:
    adapter, intent = ADAPTER_BUGS[bug]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return json_response(200, completion())

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            if streaming:
                async with adapter.open_stream(client, intent, OA_KEY) as stream:
                    [c async for c in stream]
            else:
                await adapter.complete(client, intent, OA_KEY)
    err = info.value
    assert err.failure is FailureClass.ADAPTER_ERROR and err.provider == adapter.provider
    assert "adapter error" in err.message and "canary" not in err.message
    assert not sent


def test_an_adapter_error_fails_over_and_counts_against_the_breaker() -> None:
    assert DEFAULT_ACTIONS[FailureClass.ADAPTER_ERROR] == FailureAction(True, True, KeyEffect.NONE)
    table = parse_config({"failures": {"adapter_error": {"counts_for_breaker": False}}}, env={}).failures
    assert table[FailureClass.ADAPTER_ERROR] == FailureAction(True, False, KeyEffect.NONE)
    error = http_error_for(UpstreamError("openai: adapter error: ...", failure=FailureClass.ADAPTER_ERROR))
    assert (error.status, error.code) == (502, "adapter_error")


async def test_a_broken_adapter_fails_requests_with_a_typed_error_and_releases_the_key() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return json_response(200, completion())

    async with mocked_router(
        handler, {"k1": "sk-canary-k1-000", "k2": "sk-canary-k2-000"}, headers={"x-team": "é"}
    ) as router:
        for _ in range(3):
            with trio.fail_after(5), pytest.raises(UpstreamError) as info:
                await router.route(chat("hi"))
            assert info.value.failure is FailureClass.ADAPTER_ERROR
        assert not sent
        for key_id in ("k1", "k2"):
            key = router.key(key_id)
            assert key is not None and key["in_flight"] == 0 and key["lifecycle"] == "active"


# ------------------------------------------------------------------------------ key material echoed back

PLAIN = "Qz7xK9mWv2Lp4Rt8Yh3Nc6Bd"  # a key without any well-known prefix
PREFIXED = "sk-proj-Jf5Wq8Ze2Hs9Ua4Mk7Xc"


def _no_piece_of(secret: str, text: str, n: int = 4) -> None:
    pieces = {secret[i : i + n] for i in range(len(secret) - n + 1)}
    leaked = sorted(p for p in pieces if p in text)
    assert not leaked, f"{leaked} of the secret in {text!r}"


@pytest.mark.parametrize("raw", [PLAIN, PREFIXED], ids=["plain", "sk-"])
def test_scrub_removes_every_form_of_the_key(raw: str) -> None:
    secret = Secret(raw)
    masked = f"{raw[:4]}****{raw[-4:]}"
    forms = [
        raw,  # the whole key
        raw[5:17],  # any 6 or more of its characters in a row
        raw[-6:],
        masked,  # the masked forms providers print
        f"{raw[:4]}...{raw[-4:]}",
        f"{raw[:3]}{'*' * 20}{raw[-4:]}",
    ]
    for form in forms:
        text = scrub(f"Incorrect API key provided: {form}. You can find your API key at https://x.test.", secret)
        _no_piece_of(raw, text)
        assert text.startswith("Incorrect API key provided: [redacted]"), text
        assert text.endswith("You can find your API key at https://x.test."), text


def test_scrub_removes_token_shaped_runs_of_other_keys() -> None:
    other = "k3Jd8Hf2Lq9Zm4Xv7Bn1Cw6R"  # not this request's key, but a key all the same
    for text in (
        f"key {other} is disabled",
        "key abcd****wxyz is disabled",
        "key sk-ant-api03-Xy****Zw is disabled",
        "use sk-abc12 instead",
    ):
        scrubbed = scrub(text, Secret("sk-unrelated-0000"))
        assert ("[redacted]" in scrubbed and "is disabled" in scrubbed) or "instead" in scrubbed, scrubbed
        assert other not in scrubbed and "****" not in scrubbed and "abcd" not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "The model `gpt-4o-mini-2024-07-18` does not exist or you do not have access to it.",
        "The model claude-3-5-sonnet-20241022 is overloaded; retry later.",
        "Rate limit reached for gpt-4o in organization org-abc on requests per min (RPM): Limit 500, Used 500.",
        "This model's maximum context length is 128000 tokens; you asked for 130000.",
        "request 123e4567-e89b-12d3-a456-426614174000 failed",
    ],
)
def test_scrub_keeps_ordinary_upstream_text(text: str) -> None:
    assert scrub(text, Secret(PLAIN)) == text


@pytest.mark.parametrize("raw", [PLAIN, PREFIXED], ids=["plain", "sk-"])
async def test_a_401_echoing_a_masked_key_leaves_no_piece_of_it_in_state(raw: str) -> None:
    masked = f"{raw[:4]}****{raw[-4:]}"

    def handler(request: httpx.Request) -> httpx.Response:
        message = f"Incorrect API key provided: {masked}. Key {raw[2:14]} is not valid."
        body = {"error": {"message": message, "type": f"auth-{raw[:8]}", "code": f"invalid_api_key-{raw[-9:]}"}}
        return json_response(401, body)

    async with mocked_router(handler, {"k": raw}) as router:
        with structlog.testing.capture_logs() as logs, trio.fail_after(5), pytest.raises(ApiKeyRouterError) as info:
            await router.route(chat("hi"))
        await trio.sleep(0.05)
        key = router.key("k")
        assert key is not None and key["lifecycle"] == "invalid"
        shown = [
            json.dumps(key),
            json.dumps(router.get_state_summary(), default=str),
            json.dumps(router.transitions("k"), default=str),
            repr(logs),
            str(info.value),
            repr(info.value),
        ]
        err = info.value
        if isinstance(err, UpstreamError):
            shown += [str(err.code), str(err.error_type), err.message]
    for text in shown:
        _no_piece_of(raw, text)
    assert "Incorrect API key provided: [redacted]" in key["lifecycle_reason"]
