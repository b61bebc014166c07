"""Tool calls in an OpenAI upstream's answer reach the normalised response and an OpenAI client's JSON."""

from __future__ import annotations

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.domain.request import RequestIntent, SystemResponse, ToolCall, Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.proxy._openai import completion_json
from apikeyrouter.secret import Secret

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def test_an_openai_answer_with_tool_calls_is_normalised_and_rendered_with_content_null() -> None:
    intent = RequestIntent.from_openai({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    data = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5},
    }
    response = OpenAIAdapter().normalise(data, intent, Secret("sk-x"), QuotaSignal())
    assert response.tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
    message = completion_json(response, "chatcmpl-x", 0)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"] == {"role": "assistant", "content": None, "tool_calls": [CALL]}


def test_a_refusal_passes_through_and_a_plain_answer_keeps_its_shape() -> None:
    refused = SystemResponse("", "m", Usage(1, 1), "stop", raw={"refusal": "I can't help with that."})
    assert completion_json(refused, "c", 0)["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
    }
    plain = SystemResponse("hello", "m", Usage(1, 1), "stop")
    assert completion_json(plain, "c", 0)["choices"][0]["message"] == {"role": "assistant", "content": "hello"}


def test_a_tool_loops_follow_up_reaches_an_openai_upstream_as_the_client_wrote_it() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    intent = RequestIntent.from_openai({"model": "gpt-4o-mini", "messages": messages, "tools": tools})
    body = OpenAIAdapter().body(intent, stream=False)
    assert body["messages"] == messages and body["tools"] == tools
    # The text is still what estimates count, and equal texts are equal messages whatever their shape.
    assert [m.content for m in intent.messages] == ["Weather in Paris?", "", '{"temp_c": 18}']
    assert intent.messages[2] == RequestIntent.from_openai(
        {"model": "m", "messages": [{"role": "tool", "content": '{"temp_c": 18}'}]}
    ).messages[0]
