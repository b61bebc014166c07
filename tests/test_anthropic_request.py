"""An Anthropic Messages body: every field read is type-checked (a wrong type is an `InvalidRequest` naming
it the way Anthropic does, a 400 in Anthropic's error shape from the proxy), and what passes is sent to
the Anthropic upstream as the caller wrote it."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from apikeyrouter.adapters import AnthropicAdapter, count_chat
from apikeyrouter.adapters.tokens import count_request
from apikeyrouter.domain.request import ChatMessage, RequestIntent, ToolCall, ToolCallDelta
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.secret import Secret
from tests.adapter_mocks import json_response, mock_client, sse_response
from tests.proxy_fakes import CLIENT_TOKEN, FakeRouter, running_proxy

BASE: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"name": "lookup", "description": "find a thing", "input_schema": {"type": "object", "properties": {}}}


def turn(content: Any, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": content}]


# (field set in the body, a wrong value, the param the error must name)
WRONG: list[tuple[str, Any, str]] = [
    ("model", 3, "model"),
    ("model", None, "model"),
    ("model", "", "model"),
    ("max_tokens", None, "max_tokens"),
    ("max_tokens", "64", "max_tokens"),
    ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("messages", None, "messages"),
    ("messages", "hi", "messages"),
    ("messages", [], "messages"),
    ("messages", [3], "messages.0"),
    ("messages", [{"role": "system", "content": "x"}], "messages.0.role"),
    ("messages", turn(3), "messages.0.content"),
    ("messages", turn(None), "messages.0.content"),
    ("messages", turn([3]), "messages.0.content.0"),
    ("messages", turn([{"text": "x"}]), "messages.0.content.0.type"),
    ("messages", turn([{"type": "text", "text": 3}]), "messages.0.content.0.text"),
    ("messages", turn([{"type": "image", "source": "data:..."}]), "messages.0.content.0.source"),
    (
        "messages",
        turn([{"type": "tool_use", "id": 1, "name": "f", "input": {}}], "assistant"),
        "messages.0.content.0.id",
    ),
    ("messages", turn([{"type": "tool_use", "id": "t", "input": {}}], "assistant"), "messages.0.content.0.name"),
    ("messages", turn([{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]), "messages.0.content.0.input"),
    ("messages", turn([{"type": "tool_result", "content": "x"}]), "messages.0.content.0.tool_use_id"),
    ("messages", turn([{"type": "tool_result", "tool_use_id": "t", "content": 3}]), "messages.0.content.0.content"),
    (
        "messages",
        turn([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": 3}]}]),
        "messages.0.content.0.content.0.text",
    ),
    (
        "messages",
        turn([{"type": "tool_result", "tool_use_id": "t", "is_error": "no"}]),
        "messages.0.content.0.is_error",
    ),
    ("system", 3, "system"),
    ("system", {"type": "text", "text": "x"}, "system"),
    ("system", [3], "system.0"),
    ("system", [{"type": "image"}], "system.0.type"),
    ("system", [{"type": "text", "text": None}], "system.0.text"),
    ("stop_sequences", "END", "stop_sequences"),
    ("stop_sequences", [3], "stop_sequences"),
    ("temperature", "0.5", "temperature"),
    ("temperature", True, "temperature"),
    ("temperature", 1.5, "temperature"),
    ("temperature", math.nan, "temperature"),
    ("top_p", "0.9", "top_p"),
    ("top_p", 2, "top_p"),
    ("top_k", "3", "top_k"),
    ("top_k", 2.5, "top_k"),
    ("top_k", -1, "top_k"),
    ("tools", TOOL, "tools"),
    ("tools", [3], "tools.0"),
    ("tools", [{"input_schema": {}}], "tools.0.name"),
    ("tools", [{"name": "f"}], "tools.0.input_schema"),
    ("tools", [{"name": "f", "input_schema": "{}"}], "tools.0.input_schema"),
    ("tools", [{"name": "f", "input_schema": {}, "description": 3}], "tools.0.description"),
    ("tool_choice", "auto", "tool_choice"),
    ("tool_choice", {"type": "some"}, "tool_choice.type"),
    ("tool_choice", {"type": "tool"}, "tool_choice.name"),
    ("tool_choice", {"type": "auto", "disable_parallel_tool_use": "yes"}, "tool_choice.disable_parallel_tool_use"),
    ("metadata", "user-1", "metadata"),
    ("metadata", {"user_id": 7}, "metadata.user_id"),
    ("stream", "true", "stream"),
    ("stream", 1, "stream"),
]


@pytest.mark.parametrize(("field", "value", "param"), WRONG, ids=[f"{f}={v!r}" for f, v, _ in WRONG])
def test_a_wrong_type_names_the_field(field: str, value: Any, param: str) -> None:
    body = {**BASE, field: value}
    if value is None:  # left out
        del body[field]
    with pytest.raises(InvalidRequest) as info:
        RequestIntent.from_anthropic(body)
    assert info.value.param == param, str(info.value)
    assert str(info.value).startswith(f"{param}: ")


def test_a_body_that_is_not_an_object_and_a_lone_surrogate_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        RequestIntent.from_anthropic([BASE])
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        RequestIntent.from_anthropic({**BASE, "messages": turn("hi \ud800")})


def test_count_tokens_needs_no_max_tokens_but_a_message_does() -> None:
    body = {k: v for k, v in BASE.items() if k != "max_tokens"}
    assert RequestIntent.from_anthropic(body, count_only=True).max_tokens is None
    with pytest.raises(InvalidRequest) as info:
        RequestIntent.from_anthropic(body)
    assert str(info.value) == "max_tokens: Field required: a positive integer"


CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "look it up"}, {"type": "image", "source": {"type": "url"}}]},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "on it"},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
        ],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}]},
]


def test_the_intent_is_the_text_and_keeps_the_blocks() -> None:
    body = {
        **BASE,
        "messages": CONVERSATION,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "tools": [TOOL],
        "tool_choice": {"type": "any"},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    intent = RequestIntent.from_anthropic(body)
    assert intent.messages == (
        ChatMessage("system", "be brief"),
        ChatMessage("user", "look it up"),
        ChatMessage("assistant", 'on it\n\nlookup {"q": "x"}'),
        ChatMessage("user", "found"),
    )
    assert (intent.max_tokens, intent.temperature, intent.stop, intent.stream) == (64, 0.3, ("END",), True)
    assert intent.extra == {"top_k": 5, "metadata": {"user_id": "u-1"}}
    assert intent.anthropic is not None
    assert list(intent.anthropic.messages) == CONVERSATION
    assert intent.anthropic.tools == (TOOL,) and intent.anthropic.tool_choice == {"type": "any"}
    # The tool definitions are input the provider bills: the estimate counts them.
    assert count_request(intent).tokens > count_chat(intent.messages, intent.model).tokens


ADAPTER = AnthropicAdapter(base_url="http://upstream.test/v1")
KEY = Secret("sk-ant-test-0001")


def test_the_adapter_sends_the_blocks_system_and_tools_as_written() -> None:
    body = {**BASE, "messages": CONVERSATION, "system": [{"type": "text", "text": "be brief"}], "tools": [TOOL]}
    sent = ADAPTER.body(RequestIntent.from_anthropic({**body, "tool_choice": {"type": "auto"}}), stream=True)
    assert sent == {
        "messages": CONVERSATION,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": True,
    }


async def test_a_tool_use_answer_comes_back_as_tool_calls() -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "x"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }
    async with mock_client(lambda r: json_response(200, answer)) as client:
        result = await ADAPTER.complete(client, RequestIntent.from_anthropic(BASE), KEY)
    response = result.response
    assert response.content == "let me look" and response.finish_reason == "tool_calls"
    assert response.tool_calls == (ToolCall("toolu_9", "lookup", '{"q": "x"}'),)


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


async def test_a_streamed_tool_use_comes_back_as_tool_call_pieces() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-haiku-4-5"}
    events = _sse(
        {"type": "message_start", "message": {**message, "usage": {"input_tokens": 10, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"x"}'}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    )
    async with (
        mock_client(lambda r: sse_response([events], {})) as client,
        ADAPTER.open_stream(client, RequestIntent.from_anthropic(BASE), KEY) as stream,
    ):
        chunks = [chunk async for chunk in stream]
    assert [c.tool_call for c in chunks if c.tool_call is not None] == [
        ToolCallDelta(0, id="toolu_9", name="lookup"),
        ToolCallDelta(0, arguments='{"q": '),
        ToolCallDelta(0, arguments='"x"}'),
    ]
    assert "".join(c.delta for c in chunks) == "ok"
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].raw["stop_reason"] == "tool_use"


async def test_errors_on_the_messages_routes_have_anthropics_shape() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        no_key = await http.post("/v1/messages", json=BASE)
        not_json = await http.post("/v1/messages", headers={"x-api-key": CLIENT_TOKEN}, content=b"{")
        wrong_method = await http.get("/v1/messages/count_tokens", headers={"x-api-key": CLIENT_TOKEN})
        openai_route = await http.post("/v1/chat/completions", json=BASE)
    assert no_key.status_code == 401 and no_key.json()["error"] == {
        "type": "authentication_error",
        "message": "missing API key: send 'x-api-key: <client token>' or 'Authorization: Bearer <client token>'",
    }
    assert no_key.json()["type"] == "error" and no_key.json()["request_id"] == no_key.headers["x-request-id"]
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    # Every other route keeps the OpenAI shape.
    assert openai_route.status_code == 401 and openai_route.json()["error"]["code"] == "invalid_api_key"
