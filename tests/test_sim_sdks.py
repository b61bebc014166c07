"""The official SDKs talk to the simulator unchanged (they run in worker threads; the sim in our nursery)."""

from __future__ import annotations

import anthropic
import openai
import pytest
import trio

from apikeyrouter.adapters import count_text
from tests.sim_helpers import start_sim

CONFIG = {"keys": [{"key": "sk-sim-tight", "rpm": 1, "window_s": 30}, {"key": "sk-sim-invalid", "behavior": "invalid"}]}
MESSAGES = [{"role": "user", "content": "hello from the sdk"}]


async def test_openai_sdk(nursery: trio.Nursery) -> None:
    _, base = await start_sim(nursery, CONFIG)

    def run() -> None:
        client = openai.OpenAI(api_key="sk-sim-any", base_url=f"{base}/v1", max_retries=0, timeout=5)
        done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=30)  # type: ignore[arg-type]
        text = done.choices[0].message.content
        assert text and done.usage is not None
        assert done.usage.completion_tokens == count_text(text, "o200k_base")
        assert done.choices[0].finish_reason in ("stop", "length")

        pieces, usage = [], None
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None and usage.completion_tokens == len(pieces)

        assert [m.id for m in client.models.list()][:2] == ["gpt-4o", "gpt-4o-mini"]

        tight = openai.OpenAI(api_key="sk-sim-tight", base_url=f"{base}/v1", max_retries=0, timeout=5)
        raw = tight.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            tight.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        err = info.value
        assert err.status_code == 429 and err.code == "rate_limit_exceeded"
        assert 28 <= int(err.response.headers["retry-after"]) <= 30
        assert err.response.headers["x-ratelimit-limit-requests"] == "2"  # 1 per 30 s = 2 per minute

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="sk-sim-invalid", base_url=f"{base}/v1", max_retries=0).models.list()

    await trio.to_thread.run_sync(run)


async def test_anthropic_sdk(nursery: trio.Nursery) -> None:
    _, base = await start_sim(nursery, CONFIG)

    def run() -> None:
        client = anthropic.Anthropic(api_key="sk-sim-any", base_url=base, max_retries=0, timeout=5)
        msg = client.messages.create(model="claude-haiku-4-5", max_tokens=50, system="be brief", messages=MESSAGES)  # type: ignore[arg-type]
        assert msg.content[0].type == "text" and msg.stop_reason in ("end_turn", "max_tokens")
        assert msg.usage.output_tokens == count_text(msg.content[0].text, "cl100k_base")

        with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
        assert "".join(pieces) == final.content[0].text  # type: ignore[union-attr]
        assert final.usage.output_tokens == len(pieces) and final.stop_reason == "end_turn"

        tight = anthropic.Anthropic(api_key="sk-sim-tight", base_url=base, max_retries=0, timeout=5)
        raw = tight.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
        with pytest.raises(anthropic.RateLimitError) as info:
            tight.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.status_code == 429
        assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert 28 <= int(info.value.response.headers["retry-after"]) <= 30

    await trio.to_thread.run_sync(run)
