"""Tokenizer tables load when a model that needs them is first routed, not at startup (issue 10: idle RSS).

Each encoding's tables hold ~27-48 MiB; an idle router holds none, and a router that only routes gpt-4o
models never holds cl100k's. Checked in a fresh interpreter, since the encodings are cached per process
and other tests in this one have loaded them already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

SCENARIO = textwrap.dedent(
    """
    import json

    import httpx
    import trio

    from apikeyrouter import ApiKeyRouter
    from apikeyrouter.adapters import OpenAIAdapter
    from apikeyrouter.adapters.tokens import loaded_encodings

    ANSWER = {
        "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }

    class Canned(OpenAIAdapter):
        def make_transport(self):
            return httpx.MockTransport(lambda request: httpx.Response(200, json=ANSWER))

    async def main():
        async with ApiKeyRouter() as router:
            await router.register_provider("openai", Canned(base_url="http://upstream.test/v1"))
            await router.register_key("sk-lazy-0123456789", "openai", key_id="k1")
            print("@ idle", sorted(loaded_encodings()))
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
            response = await router.route(chat)
            print("@ answered", response.content)
            print("@ after gpt-4o-mini", sorted(loaded_encodings()))

    trio.run(main)
    """
)


def test_no_tokenizer_is_loaded_until_a_model_that_needs_one_is_routed() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, env=env, check=True, timeout=60
    ).stdout.splitlines()
    out = [line for line in out if line.startswith("@ ")]  # structlog's default logger prints to stdout too
    assert out == ["@ idle []", "@ answered hi", "@ after gpt-4o-mini ['o200k_base']"]
