"""Key material never appears in logs, exception strings or reprs, even when upstream echoes it."""

from __future__ import annotations

import httpx
import pytest
import structlog
import trio

from apikeyrouter.adapters import AnthropicAdapter, GenericHTTPAdapter, OpenAIAdapter, scrub
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, mock_client
from tests.sim_helpers import start_sim

RAW = "sk-live-SUPERSECRET-0123456789"
KEY = Secret(RAW)
INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),))


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert RAW not in text and "SUPERSECRET" not in text, text


def test_scrub() -> None:
    assert scrub(f"bad key {RAW} and Bearer {RAW}", KEY) == "bad key [redacted] and [redacted]"
    assert scrub("Incorrect API key provided: sk-live-****6789.") == "Incorrect API key provided: [redacted]."
    assert scrub("a custom-format key tr-9x echoed", Secret("tr-9x")) == "a custom-format key [redacted] echoed"


@pytest.mark.parametrize("status", [400, 401, 429, 500])
async def test_upstream_echo_is_scrubbed_everywhere(status: int) -> None:
    echo = {"error": {"message": f"Key {RAW} rejected (Authorization: Bearer {RAW})", "type": "x", "code": RAW}}
    adapters = [
        OpenAIAdapter(base_url="https://x.test/v1"),
        AnthropicAdapter(base_url="https://x.test/v1"),
        GenericHTTPAdapter(url="https://x.test/api", auth_header="X-Key", auth_format="{key}"),
    ]
    with structlog.testing.capture_logs() as logs:
        for adapter in adapters:
            async with mock_client(lambda r: json_response(status, echo)) as client:
                with pytest.raises(UpstreamError) as info:
                    await adapter.complete(client, INTENT, KEY)
            err = info.value
            assert_clean(str(err), repr(err), err.message, str(err.args))
    assert_clean(repr(logs))


async def test_transport_errors_and_reprs_are_clean() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.headers['authorization']}")

    adapter = OpenAIAdapter(base_url="https://x.test/v1")
    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, INTENT, KEY)
    assert_clean(str(info.value), repr(info.value), repr(KEY), str(KEY), f"{KEY}", repr(adapter.__dict__))


async def test_no_key_in_logs_against_the_sim(nursery: trio.Nursery) -> None:
    with structlog.testing.capture_logs() as logs:
        _, base = await start_sim(nursery, {"keys": [{"key": RAW, "behavior": "invalid"}]})
        adapter = OpenAIAdapter(base_url=f"{base}/v1")
        async with adapter.make_client() as client:
            with pytest.raises(UpstreamError) as info:
                await adapter.complete(client, INTENT, KEY)
            async with adapter.open_stream(client, INTENT, Secret("sk-live-OTHERSECRET-1")) as stream:
                async for _ in stream:
                    pass
    assert logs, "the sim logs its startup; the capture must have seen something"
    assert_clean(repr(logs), str(info.value), repr(info.value))
    assert "OTHERSECRET" not in repr(logs)
