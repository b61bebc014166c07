"""Every field of a chat request that the router or an adapter reads is type-checked: a wrong type is an
`InvalidRequest` naming the field (a 400 from the proxy), never a 500 from deep inside an adapter."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.secret import Secret
from tests.adapter_mocks import mock_client
from tests.proxy_fakes import CHAT, FakeRouter, auth, running_proxy
from tests.test_proxy_http import assert_openai_error

MESSAGES = [{"role": "user", "content": "hi"}]
BASE: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES}

# (field set in the body, a wrong value, the param the error must name)
WRONG: list[tuple[str, Any, str]] = [
    ("model", 3, "model"),
    ("model", None, "model"),
    ("model", "", "model"),
    ("messages", "hi", "messages"),
    ("messages", [], "messages"),
    ("messages", [3], "messages[0]"),
    ("messages", [{"role": "robot", "content": "x"}], "messages[0].role"),
    ("messages", [{"role": [], "content": "x"}], "messages[0].role"),  # unhashable: was a 500 (TypeError)
    ("messages", [{"role": {"user": 1}, "content": "x"}], "messages[0].role"),
    ("messages", [{"role": "user", "content": 3}], "messages[0].content"),
    ("messages", [{"role": "user", "content": [3]}], "messages[0].content[0]"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text"),
    ("messages", [{"role": "user", "content": [{"type": 3}]}], "messages[0].content[0].type"),
    ("max_tokens", "10", "max_tokens"),
    ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("max_completion_tokens", "10", "max_completion_tokens"),
    ("max_completion_tokens", -1, "max_completion_tokens"),
    ("temperature", "0.5", "temperature"),
    ("temperature", True, "temperature"),
    ("temperature", 3, "temperature"),
    ("temperature", math.nan, "temperature"),
    ("stop", 3, "stop"),
    ("stop", [3], "stop"),
    ("stream", "true", "stream"),
    ("stream", 1, "stream"),
    ("stream_options", "include_usage", "stream_options"),
    ("stream_options", ["include_usage"], "stream_options"),
    ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    ("tools", "search", "tools"),
    ("tools", {"type": "function"}, "tools"),
    ("tools", [3], "tools[0]"),
    ("tool_choice", 3, "tool_choice"),
    ("top_p", "0.9", "top_p"),
    ("top_p", True, "top_p"),
    ("top_p", math.inf, "top_p"),
    ("top_k", "3", "top_k"),
    ("top_k", 2.5, "top_k"),
    ("metadata", "team=search", "metadata"),
    ("user", 3, "user"),
    ("n", "2", "n"),
    ("n", 0, "n"),
    ("seed", "3", "seed"),
    ("seed", 1.5, "seed"),
    ("presence_penalty", "0", "presence_penalty"),
    ("frequency_penalty", [0], "frequency_penalty"),
    ("response_format", "json", "response_format"),
    ("logprobs", "yes", "logprobs"),
    ("top_logprobs", "3", "top_logprobs"),
    ("parallel_tool_calls", "yes", "parallel_tool_calls"),
    ("logit_bias", [1], "logit_bias"),
]


@pytest.mark.parametrize(("field", "value", "param"), WRONG, ids=[f"{f}={v!r}" for f, v, _ in WRONG])
def test_a_wrong_type_names_the_field(field: str, value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        RequestIntent.from_openai({**BASE, field: value})
    assert info.value.param == param, str(info.value)
    assert param.split("[")[0].split(".")[0] in str(info.value)


RIGHT: list[tuple[str, Any]] = [
    ("stream_options", {"include_usage": True}),
    ("stream_options", None),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("top_p", 0.9),
    ("top_k", 5),
    ("metadata", {"team": "search"}),
    ("user", "u-1"),
    ("n", 1),
    ("seed", -3),
    ("presence_penalty", 0),
    ("response_format", {"type": "json_object"}),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("parallel_tool_calls", False),
    ("logit_bias", {"50256": -100}),
    (
        "messages",
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}],
    ),
    ("max_completion_tokens", 5),
]


@pytest.mark.parametrize(("field", "value"), RIGHT, ids=[f"{f}={v!r}" for f, v in RIGHT])
def test_right_types_pass_through(field: str, value: Any) -> None:
    intent = RequestIntent.from_openai({**BASE, field: value})
    if field not in ("messages", "max_completion_tokens"):
        assert intent.extra[field] == value


async def test_stream_options_as_a_string_is_a_400_not_a_500() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers=auth(),
            json={**CHAT, "stream": True, "stream_options": "include_usage"},
        )
    error = assert_openai_error(response, 400)
    assert error["param"] == "stream_options"


async def test_an_intent_built_by_hand_with_bad_stream_options_is_refused_by_the_adapter() -> None:
    intent = RequestIntent.from_openai(BASE)
    intent = RequestIntent(intent.model, intent.messages, extra={"stream_options": "include_usage"})
    adapter = OpenAIAdapter(base_url="http://upstream.test/v1")
    async with mock_client(lambda r: httpx.Response(500)) as client:
        with pytest.raises(InvalidRequest) as info:
            async with adapter.open_stream(client, intent, Secret("sk-test")):
                pass  # pragma: no cover
    assert info.value.param == "stream_options"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_a_non_finite_number_anywhere_in_the_body_is_a_400_and_never_reaches_a_key(constant: str) -> None:
    # Python's JSON parser accepts these; no adapter can send them on, and the failure used to be an
    # adapter_error counted against the key's breaker: a client could open every key's breaker this way.
    router = FakeRouter()
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"x": %s}}'
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={**auth(), "content-type": "application/json"},
            content=(body % constant).encode(),
        )
    error = assert_openai_error(response, 400)
    assert constant in error["message"]
    assert router.calls == []
