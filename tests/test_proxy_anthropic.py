"""The official `anthropic` SDK against the proxy's `/v1/messages` on a real server, routed by a real router
across Anthropic keys of the simulator: what any Anthropic client will see."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anthropic
import attrs
import httpx
import pytest
import trio

from apikeyrouter.adapters import count_text
from apikeyrouter.config import parse_config
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.errors import BudgetExceeded, NoKeyAvailable, StreamInterrupted
from apikeyrouter.proxy import ProxyApp, serve_proxy
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.secret import Secret
from apikeyrouter.sim import SimServer, parse_sim_config
from apikeyrouter.sim.provider import SimProvider
from tests.proxy_fakes import CLIENT_TOKEN, FakeRouter, running_proxy

T = TypeVar("T")

MODEL = "claude-haiku-4-5"
MESSAGES: Any = [{"role": "user", "content": "hello from the anthropic sdk"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@attrs.frozen
class Proxy:
    url: str
    sim: SimProvider
    router: ApiKeyRouter


@asynccontextmanager
async def anthropic_proxy(
    keys: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    sim_keys: Sequence[Mapping[str, Any]] = (),
    deadline: float = 5.0,
) -> AsyncIterator[Proxy]:
    """The simulator, a router with one `anthropic` provider over it (key `k` has the secret `sk-sim-k`),
    and the proxy in front on 127.0.0.1, as `serve` assembles them."""
    sim = SimServer(parse_sim_config({"keys": list(sim_keys)}))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        provider = {"id": "claude", "kind": "anthropic", "base_url": f"http://127.0.0.1:{port}/v1", "models": [MODEL]}
        entries = [{"id": k, "provider": "claude", "secret_env": f"KEY_{k.upper()}", **extra} for k, extra in keys]
        env = {f"KEY_{k.upper()}": f"sk-sim-{k}" for k, _ in keys}
        config = parse_config({"providers": [provider], "keys": entries}, env=env)
        async with ApiKeyRouter(config) as router:
            app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)], request_deadline=deadline)
            done = trio.Event()
            async with trio.open_nursery() as inner:
                listening = await inner.start(partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=done.wait))
                try:
                    yield Proxy(listening.url, sim.provider, router)
                finally:
                    done.set()
        nursery.cancel_scope.cancel()


def sdk(url: str, token: str = CLIENT_TOKEN) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=token, max_retries=0, timeout=10)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_a_message_is_routed_with_failover_and_the_routing_headers() -> None:
    keys = [("bad", {}), ("good", {})]
    async with anthropic_proxy(keys, sim_keys=[{"key": "sk-sim-bad", "behavior": "invalid"}]) as proxy:
        client = sdk(proxy.url)
        raw = await in_thread(
            lambda: client.messages.with_raw_response.create(
                model=MODEL, max_tokens=50, system="be brief", messages=MESSAGES
            )
        )
        tried_bad = proxy.sim.stats("sk-sim-bad").requests
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.id.startswith("msg_")
    block = msg.content[0]
    assert len(msg.content) == 1 and block.type == "text" and block.text.startswith("Sim")
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    assert msg.usage.output_tokens == count_text(block.text, "cl100k_base")
    assert raw.headers["x-apikeyrouter-key-id"] == "good"
    assert raw.headers["x-apikeyrouter-attempts"] == str(1 + tried_bad)
    assert raw.headers["x-apikeyrouter-decision-id"]
    assert raw.headers["x-request-id"]


async def test_a_bearer_token_works_as_well_as_x_api_key_and_a_wrong_one_is_an_authentication_error() -> None:
    async with anthropic_proxy([("k", {})]) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
        bearer = await http.post("/v1/messages", json=body, headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
        client = sdk(proxy.url, token="sk-wrong")
        with pytest.raises(anthropic.AuthenticationError) as info:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES))
    assert bearer.status_code == 200 and bearer.json()["type"] == "message"
    assert info.value.status_code == 401
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "incorrect API key provided"},
        "request_id": info.value.response.headers["x-request-id"],
    }


async def test_streaming_text_through_the_sdk_stream_helper() -> None:
    async with anthropic_proxy([("k", {})]) as proxy:
        client = sdk(proxy.url)

        def run() -> tuple[list[str], Any, list[str], dict[str, str]]:
            with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
                pieces = list(stream.text_stream)
                final = stream.get_final_message()
                headers = dict(stream.response.headers)
            with client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, stream=True) as events:
                kinds = [event.type for event in events]
            return pieces, final, kinds, headers

        pieces, final, kinds, headers = await in_thread(run)
    assert len(pieces) > 1 and "".join(pieces).startswith("Sim")
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(pieces)
    assert final.usage.input_tokens > 0 and final.id.startswith("msg_")
    assert headers["content-type"].startswith("text/event-stream") and headers["x-apikeyrouter-key-id"] == "k"
    text_deltas = len(pieces)
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * text_deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK swallows `ping`


async def test_a_tool_use_round_trip() -> None:
    async with anthropic_proxy([("k", {})]) as proxy:
        client = sdk(proxy.url)

        def run() -> tuple[Any, Any, Any]:
            asked = [{"role": "user", "content": "What is the weather in Paris?"}]
            first = client.messages.create(model=MODEL, max_tokens=100, messages=asked, tools=[WEATHER])
            call = next(b for b in first.content if b.type == "tool_use")
            follow_up = [
                *asked,
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24 degrees"}],
                },
            ]
            second = client.messages.create(model=MODEL, max_tokens=100, messages=follow_up, tools=[WEATHER])
            with client.messages.stream(model=MODEL, max_tokens=100, messages=asked, tools=[WEATHER]) as stream:
                streamed = stream.get_final_message()
            return first, second, streamed

        first, second, streamed = await in_thread(run)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert set(call.input) == {"city", "days"} and isinstance(call.input["city"], str) and call.input["days"] == 7
    assert second.stop_reason in ("end_turn", "max_tokens") and [b.type for b in second.content] == ["text"]
    # Streamed, the tool input arrives as input_json_delta pieces the SDK puts back together.
    assert streamed.stop_reason == "tool_use"
    assert [b.type for b in streamed.content] == ["text", "tool_use"]
    assert streamed.content[1].input == call.input and streamed.content[1].id == call.id


async def test_a_bad_request_is_the_sdks_bad_request_error_naming_the_field() -> None:
    async with anthropic_proxy([("k", {})]) as proxy:
        client = sdk(proxy.url)
        bad_role: Any = [{"role": "system", "content": "hi"}]
        with pytest.raises(anthropic.BadRequestError) as role:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=bad_role))
        with pytest.raises(anthropic.BadRequestError) as budget:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=0, messages=MESSAGES))
        with pytest.raises(anthropic.NotFoundError) as model:
            await in_thread(lambda: client.messages.create(model="claude-9", max_tokens=5, messages=MESSAGES))
    assert role.value.status_code == 400
    assert role.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error",
        "message": "messages.0.role: must be 'user' or 'assistant'",
    }
    assert budget.value.body["error"]["message"] == "max_tokens: must be a positive integer"  # type: ignore[index]
    assert model.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "claude-9" in model.value.body["error"]["message"]  # type: ignore[index]


async def test_no_key_available_while_every_key_is_rate_limited_is_the_sdks_rate_limit_error() -> None:
    async with anthropic_proxy([("k", {"rpm": 1})], deadline=2.0) as proxy:
        client = sdk(proxy.url)
        await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES))
        with pytest.raises(anthropic.RateLimitError) as info:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES))
    assert info.value.status_code == 429
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    # The key's minute window recovers after the 2 s deadline: that is why the router gave up at once.
    assert int(info.value.response.headers["retry-after"]) > 2


async def test_no_key_available_otherwise_is_overloaded_529() -> None:
    router = FakeRouter()
    router.model_list = [MODEL]
    router.script = [NoKeyAvailable("every key is benched", retry_after=2.2, reasons={"c-1": "breaker open"})]
    async with running_proxy(router) as proxy:
        client = sdk(proxy.url)
        with pytest.raises(anthropic.OverloadedError) as info:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES))
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert info.value.response.headers["retry-after"] == "3"


async def test_an_exceeded_budget_tells_the_sdk_not_to_retry() -> None:
    router = FakeRouter()
    router.model_list = [MODEL]
    router.script = [BudgetExceeded("the global budget of $1.00 would be overspent", budget="global")] * 3
    async with running_proxy(router) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_TOKEN, max_retries=2, timeout=10)
        with pytest.raises(anthropic.RateLimitError) as info:
            await in_thread(lambda: client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES))
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(router.calls) == 1  # the SDK did not retry


async def test_a_failure_mid_stream_ends_it_with_an_error_event() -> None:
    router = FakeRouter()
    router.model_list = [MODEL]
    router.stream_fail_with = StreamInterrupted(
        "claude: stream broke", failure=FailureClass.SERVER_ERROR, provider="claude"
    )
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=10) as http:
        body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES, "stream": True}
        response = await http.post("/v1/messages", json=body, headers={"x-api-key": CLIENT_TOKEN})
        client = sdk(proxy.url)

        def run() -> list[str]:
            seen = []
            with client.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES) as stream:
                for text in stream.text_stream:
                    seen.append(text)
            return seen

        with pytest.raises(anthropic.APIStatusError) as info:
            await in_thread(run)
    events = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error" and "message_stop" not in events
    last = json.loads(response.text.strip().splitlines()[-1].removeprefix("data: "))
    message = "the upstream provider (claude) failed on every attempt (server_error)"
    assert last == {"type": "error", "error": {"type": "api_error", "message": message}}
    assert info.value.body == last


async def test_count_tokens_is_the_offline_estimate() -> None:
    async with anthropic_proxy([("k", {})]) as proxy:
        client = sdk(proxy.url)
        plain = await in_thread(lambda: client.messages.count_tokens(model=MODEL, messages=MESSAGES))
        with_tools = await in_thread(
            lambda: client.messages.count_tokens(model=MODEL, messages=MESSAGES, tools=[WEATHER])
        )
        served = proxy.sim.stats("sk-sim-k").requests
    # count_chat for Claude: (3 framing + 3 priming + role + text tokens in cl100k) x 1.2, rounded up.
    text_tokens = count_text("user", "cl100k_base") + count_text(MESSAGES[0]["content"], "cl100k_base")
    assert plain.input_tokens == -(-(6 + text_tokens) * 12 // 10)
    assert with_tools.input_tokens > plain.input_tokens
    assert served == 0  # answered here, never upstream
