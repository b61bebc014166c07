"""The adapters against the real simulator over 127.0.0.1: streaming, cancellation, limits, faults."""

from __future__ import annotations

import itertools

import httpx
import pytest
import trio

from apikeyrouter.adapters import AnthropicAdapter, OpenAIAdapter, count_chat, count_text
from apikeyrouter.domain.failures import FailureClass as F
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret
from apikeyrouter.sim import SimProvider
from tests.sim_helpers import start_sim

GPT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "Tell me about routers."),), max_tokens=40)
CLAUDE = RequestIntent(model="claude-haiku-4-5", messages=(ChatMessage("user", "Tell me about routers."),))
FAST = httpx.Timeout(connect=2.0, read=2.0, write=2.0, pool=2.0)


def adapters(base: str) -> tuple[OpenAIAdapter, AnthropicAdapter]:
    return OpenAIAdapter(base_url=f"{base}/v1", timeout=FAST), AnthropicAdapter(base_url=f"{base}/v1", timeout=FAST)


async def test_completions_and_usage_match_the_tokenizer(nursery: trio.Nursery) -> None:
    _, base = await start_sim(nursery)
    oa, an = adapters(base)
    async with oa.make_client() as client:
        r = (await oa.complete(client, GPT, _key("sk-a"))).response
        assert r.usage.input_tokens == count_chat(GPT.messages, GPT.model).tokens == oa.estimate(GPT).input_tokens
        assert r.usage.output_tokens == count_text(r.content, "o200k_base")
        assert r.raw["id"].startswith("chatcmpl-") and r.finish_reason == "stop"
        c = (await an.complete(client, CLAUDE, _key("sk-b"))).response
        assert c.usage.input_tokens == an.estimate(CLAUDE).input_tokens
        assert c.content and c.finish_reason == "stop"
        assert await oa.list_models(client, _key("sk-a"))


def _key(value: str) -> Secret:
    return Secret(value)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_streaming_arrives_incrementally(nursery: trio.Nursery, provider: str) -> None:
    sim, base = await start_sim(nursery, {"defaults": {"chunk_delay_ms": 25}})
    oa, an = adapters(base)
    adapter, intent = (oa, GPT) if provider == "openai" else (an, CLAUDE)
    arrivals: list[float] = []
    text = ""
    async with adapter.make_client() as client, adapter.open_stream(client, intent, _key("sk-s")) as stream:
        async for chunk in stream:
            if chunk.delta:
                arrivals.append(trio.current_time())
                text += chunk.delta
        usage = stream.usage
    assert len(arrivals) >= 6
    # Each piece arrived on its own, ~25 ms apart, not all at once at the end.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # (Tolerant of a loaded machine batching a few reads together, but never of all-at-the-end.)
    assert sum(g > 0.01 for g in gaps) >= len(gaps) // 2
    assert arrivals[-1] - arrivals[0] > 0.025 * (len(arrivals) - 2)
    assert usage is not None and usage.output_tokens == len(arrivals) == count_text(text, "o200k_base")
    with trio.fail_after(2):  # the sim counts a stream completed after its last write returns
        await sim.provider.wait_for(lambda p: p.stats("sk-s").completed == 1)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_cancelling_mid_stream_aborts_the_upstream_request(nursery: trio.Nursery, provider: str) -> None:
    sim, base = await start_sim(nursery, {"defaults": {"chunk_delay_ms": 50}})
    oa, an = adapters(base)
    adapter, intent = (oa, GPT) if provider == "openai" else (an, CLAUDE)
    got = 0
    async with adapter.make_client() as client:
        with trio.CancelScope() as scope:
            async with adapter.open_stream(client, intent, _key("sk-c")) as stream:
                async for chunk in stream:
                    got += bool(chunk.delta)
                    if got == 2:
                        scope.cancel()  # the caller gives up mid-stream
                        await trio.sleep(1)  # a checkpoint: cancellation lands here
        assert scope.cancelled_caught and got == 2
        with trio.fail_after(2):
            await sim.provider.wait_for(lambda p: p.stats("sk-c").disconnects == 1)
    stats = sim.provider.stats("sk-c")
    assert stats.completed == 0 and stats.disconnects == 1


async def test_cancelling_while_the_upstream_hangs_closes_the_connection(nursery: trio.Nursery) -> None:
    sim, base = await start_sim(nursery, {"keys": [{"key": "sk-hang", "timeout_rate": 1.0}]})
    oa, _ = adapters(base)
    async with oa.make_client() as client:
        with trio.move_on_after(0.1) as scope:
            await oa.complete(client, GPT, _key("sk-hang"))
        assert scope.cancelled_caught
        with trio.fail_after(2):
            await sim.provider.wait_for(lambda p: p.stats("sk-hang").disconnects == 1)
    assert sim.provider.stats("sk-hang").hangs == 1


async def test_read_timeout_is_a_timeout_failure(nursery: trio.Nursery) -> None:
    _, base = await start_sim(nursery, {"keys": [{"key": "sk-hang", "timeout_rate": 1.0}]})
    oa = OpenAIAdapter(base_url=f"{base}/v1", timeout=httpx.Timeout(2.0, read=0.1))
    async with oa.make_client() as client:
        with pytest.raises(UpstreamError) as info:
            await oa.complete(client, GPT, _key("sk-hang"))
    assert info.value.failure is F.TIMEOUT and isinstance(info.value.__cause__, httpx.TimeoutException)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rate_limit_headers_parse_to_the_right_numbers(nursery: trio.Nursery, provider: str) -> None:
    _, base = await start_sim(nursery, {"keys": [{"key": "sk-tight", "rpm": 3, "window_s": 30}]})
    oa, an = adapters(base)
    adapter, intent = (oa, GPT) if provider == "openai" else (an, CLAUDE)
    async with adapter.make_client() as client:
        remaining = []
        for _ in range(3):
            result = await adapter.complete(client, intent, _key("sk-tight"))
            remaining.append(result.signal.remaining_requests)
            assert result.signal.limit_requests == 6  # per minute: 3 per 30 s window
            assert result.signal.reset_requests_s is not None and 29 <= result.signal.reset_requests_s <= 32
        assert remaining == [2, 1, 0]
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, intent, _key("sk-tight"))
    err = info.value
    assert err.failure is F.RATE_LIMITED and err.status == 429
    assert err.retry_after is not None and 28 <= err.retry_after <= 31
    assert err.signal is not None and err.signal.remaining_requests == 0


@pytest.mark.parametrize(
    ("provider", "behaviour", "failure"),
    [
        ("openai", "invalid", F.AUTH_INVALID),
        ("anthropic", "invalid", F.AUTH_INVALID),
        ("openai", "exhausted", F.QUOTA_EXHAUSTED),
        ("anthropic", "exhausted", F.QUOTA_EXHAUSTED),
    ],
)
async def test_key_behaviours(nursery: trio.Nursery, provider: str, behaviour: str, failure: F) -> None:
    _, base = await start_sim(nursery, {"keys": [{"key": "sk-odd-key-123456", "behavior": behaviour}]})
    oa, an = adapters(base)
    adapter, intent = (oa, GPT) if provider == "openai" else (an, CLAUDE)
    async with adapter.make_client() as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, intent, _key("sk-odd-key-123456"))
    assert info.value.failure is failure
    assert "sk-odd" not in str(info.value) and "123456" not in repr(info.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_injected_faults(nursery: trio.Nursery, provider: str) -> None:
    sim, base = await start_sim(
        nursery,
        {
            "keys": [
                {"key": "sk-err", "error_rate": 1.0},
                {"key": "sk-reset", "reset_rate": 1.0},
                {"key": "sk-cut", "cut_stream_after": 3},
            ]
        },
    )
    oa, an = adapters(base)
    adapter, intent = (oa, GPT) if provider == "openai" else (an, CLAUDE)
    async with adapter.make_client() as client:
        seen = set()
        for _ in range(12):
            with pytest.raises(UpstreamError) as info:
                await adapter.complete(client, intent, _key("sk-err"))
            seen.add((info.value.status, info.value.failure))
        overloaded = 503 if provider == "openai" else 529
        assert seen == {(500, F.SERVER_ERROR), (overloaded, F.OVERLOADED)}
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, intent, _key("sk-reset"))
        assert info.value.failure is F.CONNECTION
        deltas = []
        with pytest.raises(StreamInterrupted) as cut:
            async with adapter.open_stream(client, intent, _key("sk-cut")) as stream:
                async for chunk in stream:
                    deltas.append(chunk.delta)
        assert cut.value.failure is F.CONNECTION and len([d for d in deltas if d]) == 3
        assert stream.usage is not None and stream.usage.output_tokens == 3
    assert sim.provider.stats("sk-reset").resets == 1 and sim.provider.stats("sk-cut").cuts == 1


def test_stats_of_an_unseen_key_are_zero() -> None:
    assert SimProvider().stats("nobody").requests == 0
