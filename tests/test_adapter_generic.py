"""GenericHTTPAdapter: a non-LLM JSON API configured entirely by data."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from apikeyrouter.adapters import GenericHTTPAdapter, ProviderAdapter
from apikeyrouter.domain.failures import FailureClass as F
from apikeyrouter.domain.request import ChatMessage, RequestIntent, Usage
from apikeyrouter.errors import MalformedResponse, UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, mock_client

KEY = Secret("tr-SECRETVALUE-123")


def translator() -> GenericHTTPAdapter:
    return GenericHTTPAdapter(
        url="https://translate.example.test/v2/translate",
        auth_header="X-Auth",
        auth_format="Token {key}",
        content_path="translations.0.text",
        input_tokens_path="billing.characters",
        model_path="engine",
        quota_headers={
            "X-Quota-Limit": "limit_requests",
            "X-Quota-Remaining": "remaining_requests",
            "X-Quota-Reset": "reset_requests_s",
        },
        prices={"deepish": ("20", "0")},
    )


def intent() -> RequestIntent:
    return RequestIntent(
        model="deepish", messages=(ChatMessage("user", "hallo"),), extra={"text": ["hallo"], "target_lang": "EN"}
    )


async def test_success() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(
            200,
            {"translations": [{"text": "hello"}], "billing": {"characters": 5}, "engine": "deepish-v3"},
            {"X-Quota-Limit": "1000", "X-Quota-Remaining": "998", "X-Quota-Reset": "1m30s"},
        )

    adapter = translator()
    assert isinstance(adapter, ProviderAdapter)
    async with mock_client(handler) as client:
        result = await adapter.complete(client, intent(), KEY)
    assert seen[0].headers["x-auth"] == f"Token {KEY.reveal()}"
    assert json.loads(seen[0].content) == {"text": ["hallo"], "target_lang": "EN"}
    assert result.response.content == "hello" and result.response.model == "deepish-v3"
    assert result.response.usage == Usage(5, 0)
    assert (result.signal.limit_requests, result.signal.remaining_requests, result.signal.reset_requests_s) == (
        1000,
        998,
        90.0,
    )
    assert adapter.cost("deepish", result.response.usage) == Decimal("0.0001")
    async with mock_client(handler) as client, adapter.open_stream(client, intent(), KEY) as stream:
        chunks = [c async for c in stream]
    assert [c.delta for c in chunks] == ["hello"] and stream.usage == Usage(5, 0)


async def test_errors_and_missing_content() -> None:
    adapter = translator()
    async with mock_client(lambda r: json_response(456, {"message": "Quota exceeded"}, {"retry-after": "60"})) as c:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(c, intent(), KEY)
    assert info.value.failure is F.BAD_REQUEST and info.value.retry_after == 60.0
    async with mock_client(lambda r: json_response(429, {"message": "slow down"}, {"retry-after": "2"})) as c:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(c, intent(), KEY)
    assert info.value.failure is F.RATE_LIMITED
    async with mock_client(lambda r: json_response(200, {"nothing": True})) as c:
        with pytest.raises(MalformedResponse):
            await adapter.complete(c, intent(), KEY)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="must contain"):
        GenericHTTPAdapter(url="https://x", auth_format="Bearer")
    with pytest.raises(ValueError, match="unknown QuotaSignal fields"):
        GenericHTTPAdapter(url="https://x", quota_headers={"x-left": "remaining_things"})
