"""The official `openai` SDK against the proxy on a real server: what any OpenAI client will see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest
import trio

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.errors import InvalidRequest, NoKeyAvailable, UpstreamError
from tests.proxy_fakes import CLIENT_TOKEN, FakeRouter, answer, running_proxy

T = TypeVar("T")

MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


def sdk(url: str, token: str = CLIENT_TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=10)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_chat_completion_with_routing_headers() -> None:
    router = FakeRouter()
    router.script = [answer("Hi from oa-2", key="oa-2", attempts=2)]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        raw = await in_thread(
            lambda: client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hi from oa-2"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        9,
        3,
        12,
    )
    assert raw.headers["x-apikeyrouter-key-id"] == "oa-2"
    assert raw.headers["x-apikeyrouter-attempts"] == "2"
    assert raw.headers["x-apikeyrouter-decision-id"] == "d-2"
    assert raw.headers["x-request-id"]
    intent, _, client_id = router.calls[0]
    assert intent.model == "gpt-4o-mini" and intent.messages[0].content == "Say hello"
    assert client_id is not None and client_id.startswith("fp:")  # the token's fingerprint, never the token


async def test_streaming_with_usage() -> None:
    router = FakeRouter()
    router.stream_delay = 0.01
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)

        def run() -> tuple[list[Any], dict[str, str]]:
            with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ) as response:
                headers = dict(response.headers)
                return list(response.parse()), headers

        chunks, headers = await in_thread(run)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-apikeyrouter-key-id"] == "oa-1"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12


async def test_streaming_without_usage_option_has_no_usage_chunk() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        chunks = await in_thread(
            lambda: list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        )
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"


async def test_upstream_failure_mid_stream_is_an_error_event() -> None:
    router = FakeRouter()
    router.stream_fail_with = UpstreamError(
        "connection reset", failure=FailureClass.CONNECTION, provider="openai", key_id="oa-1"
    )
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        seen: list[str] = []

        def run() -> None:
            for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
                if chunk.choices:
                    seen.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError, match="failed on every attempt"):
            await in_thread(run)
    assert "".join(seen) == "Hello!"


async def test_wrong_token_is_401() -> None:
    async with running_proxy(FakeRouter()) as proxy:
        client = sdk(proxy.url, token="sk-wrong")
        with pytest.raises(openai.AuthenticationError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


async def test_malformed_request_is_400_naming_the_field() -> None:
    async with running_proxy(FakeRouter()) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.BadRequestError) as info:
            await in_thread(
                lambda: client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "wizard", "content": "hi"}]
                )
            )
    assert info.value.status_code == 400
    assert info.value.param == "messages[0].role"
    assert "messages[0].role must be one of" in info.value.message


async def test_unknown_model_is_404_model_not_found() -> None:
    async with running_proxy(FakeRouter()) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.NotFoundError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-9", messages=MESSAGES))
    assert info.value.code == "model_not_found"
    assert "gpt-9" in info.value.message


async def test_no_key_available_is_503_with_retry_after() -> None:
    router = FakeRouter()
    router.script = [NoKeyAvailable("every key is benched", retry_after=2.2, reasons={"oa-1": "breaker open"})]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.InternalServerError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "no_key_available"


async def test_every_key_rate_limited_is_429() -> None:
    router = FakeRouter()
    router.script = [
        NoKeyAvailable("no key", retry_after=0.2, reasons={"oa-1": "throttled until reset", "oa-2": "rate_limited"})
    ]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.RateLimitError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
    assert info.value.response.headers["retry-after"] == "1"


async def test_caller_fault_passes_through_upstream_status_and_message() -> None:
    router = FakeRouter()
    router.script = [
        UpstreamError(
            "This model's maximum context length is 128000 tokens.",
            failure=FailureClass.CONTEXT_LENGTH,
            status=400,
            code="context_length_exceeded",
            error_type="invalid_request_error",
        )
    ]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.BadRequestError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in info.value.message


async def test_invalid_request_from_router_is_400() -> None:
    router = FakeRouter()
    router.script = [InvalidRequest("'n' must be 1", param="n")]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(openai.BadRequestError) as info:
            await in_thread(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
    assert info.value.param == "n"


async def test_models_list() -> None:
    async with running_proxy(FakeRouter()) as proxy:
        client = sdk(proxy.url)
        models = await in_thread(lambda: list(client.models.list()))
    assert [m.id for m in models] == ["gpt-4o-mini", "gpt-4o"]
