"""The adapters' own work per request, without sockets: what issue 10 calls the "adapter" stage.

    PYTHONPATH=src python benchmarks/adapter.py [--requests 5000] [--rounds 5] [--only openai,...] [--profile]

Each request does what the request path asks of an adapter: `estimate(intent)` (the budget hold's upper
bound), `complete(client, intent, secret)` (body, JSON encoding, headers, the exchange, quota headers, the
JSON answer, the normalised completion) and `cost(model, usage)` (settlement). The client is a
`PooledClient` whose pool answers at once with a canned response, so what is measured is the adapter and
nothing of the transport: the response headers are built the way the direct transport builds them
(`LowerHeaders.from_raw` of raw header pairs) and the body is handed over whole. Rate-limit headers vary
per request, drawn from 997 different reset strings, as a real provider's do (no cache wins by replaying
one string), and every request's user message is its own (the system prompt is the same, as an app's is).

Cases: `openai` (chat completion), `anthropic` (Messages API), `openai_stream` and `anthropic_stream`
(`open_stream` read to its end: 6 events per stream, each its own network chunk; `cpu_us` per stream).

Rounds interleave the cases; each figure is the median over rounds of CPU µs per request
(`time.process_time()`). Run it in two checkouts with benchmarks/ab.py for a same-run before/after (pass
this file's absolute path so both sides run the same script). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from apikeyrouter.adapters import AnthropicAdapter, OpenAIAdapter
from apikeyrouter.adapters.headers import LowerHeaders
from apikeyrouter.adapters.transport import H11Transport, PooledClient
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.secret import Secret

CASES = ("openai", "anthropic", "openai_stream", "anthropic_stream")
KEY = Secret("sk-bench-0123456789abcdef0123456789")
OPENAI_INTENT = RequestIntent(
    model="gpt-4o-mini",
    messages=(ChatMessage("system", "You are terse."), ChatMessage("user", "Say hello in one word.")),
    max_tokens=16,
)
ANTHROPIC_INTENT = RequestIntent(
    model="claude-3-5-haiku-20241022", messages=(ChatMessage("user", "Say hello in one word."),), max_tokens=16
)


def _duration(seconds: float) -> str:
    # OpenAI's reset format, as the simulator writes it: 20ms, 1s, 6m0s, 1h2m3.5s.
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    millis = round(seconds * 1000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{minutes}m" if minutes else "") + f"{secs}s"


_rng = random.Random(10)
RESETS = [_duration(_rng.uniform(0.0, 90.0)).encode() for _ in range(997)]
INSTANTS = [f"2026-12-02T04:{m:02d}:{s:02d}Z".encode() for m in range(60) for s in range(0, 60, 7)]

OPENAI_BODY = json.dumps(
    {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion",
        "created": 1764648000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23},
        "system_fingerprint": "fp_bench",
    }
).encode()
ANTHROPIC_BODY = json.dumps(
    {
        "id": "msg_bench0123456789",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [{"type": "text", "text": "Hello."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 14, "output_tokens": 4},
    }
).encode()


def _sse(events: list[tuple[str | None, Any]]) -> list[bytes]:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode())
    return out


def _openai_chunk(delta: Mapping[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [{"index": 0, "delta": dict(delta), "finish_reason": finish}] if usage is None else []
    chunk: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764648000}
    chunk |= {"model": "gpt-4o-mini-2024-07-18", "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


OPENAI_EVENTS = _sse(
    [
        (None, _openai_chunk({"role": "assistant", "content": ""})),
        (None, _openai_chunk({"content": "Hel"})),
        (None, _openai_chunk({"content": "lo."})),
        (None, _openai_chunk({}, "stop")),
        (None, _openai_chunk({}, usage={"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23})),
        (None, "[DONE]"),
    ]
)
TEXT_BLOCK = {"type": "text", "text": ""}
TEXT_DELTA = {"type": "text_delta", "text": "Hello."}
OUTPUT_USAGE = {"output_tokens": 4}
ANTHROPIC_EVENTS = _sse(
    [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bench",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-3-5-haiku-20241022",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 14, "output_tokens": 1},
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": TEXT_BLOCK}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": TEXT_DELTA}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": OUTPUT_USAGE}),
        ("message_stop", {"type": "message_stop"}),
    ]
)


class CannedResponse:
    """What the direct path yields (status, lowercase headers, the body), with nothing behind it."""

    def __init__(self, raw_headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> None:
        self.status_code = 200
        self.reason_phrase = "OK"
        self.raw_headers = raw_headers
        self.headers = LowerHeaders.from_raw(raw_headers)
        self._chunks = chunks

    async def _iter(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def aclose(self) -> None:
        return None


class CannedPool(H11Transport):
    """A pool whose `request` answers at once: rate-limit headers from a rotating set, a fixed body."""

    def __init__(self, kind: str, chunks: list[bytes], *, stream: bool) -> None:
        super().__init__()
        self.kind, self.chunks, self.stream = kind, chunks, stream
        self.resets = itertools.cycle(RESETS)
        self.instants = itertools.cycle(INSTANTS)
        self.counts = itertools.cycle(range(1000, 999_999, 7919))

    def _headers(self) -> list[tuple[bytes, bytes]]:
        ctype = b"text/event-stream" if self.stream else b"application/json"
        head = [(b"Date", b"Wed, 02 Dec 2026 04:00:00 GMT"), (b"Content-Type", ctype)]
        if not self.stream:
            head.append((b"Content-Length", b"%d" % len(self.chunks[0])))
        count = b"%d" % next(self.counts)
        if self.kind == "openai":
            head += [
                (b"x-request-id", b"req_0123456789abcdef"),
                (b"x-ratelimit-limit-requests", b"10000"),
                (b"x-ratelimit-limit-tokens", b"30000000"),
                (b"x-ratelimit-remaining-requests", b"9999"),
                (b"x-ratelimit-remaining-tokens", count),
                (b"x-ratelimit-reset-requests", next(self.resets)),
                (b"x-ratelimit-reset-tokens", next(self.resets)),
            ]
        else:
            head += [
                (b"request-id", b"req_0123456789abcdef"),
                (b"anthropic-ratelimit-requests-limit", b"4000"),
                (b"anthropic-ratelimit-requests-remaining", b"3999"),
                (b"anthropic-ratelimit-requests-reset", next(self.instants)),
                (b"anthropic-ratelimit-tokens-limit", b"400000"),
                (b"anthropic-ratelimit-tokens-remaining", count),
                (b"anthropic-ratelimit-tokens-reset", next(self.instants)),
            ]
        return [*head, (b"Server", b"bench"), (b"Connection", b"keep-alive")]

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], content: Any, steps: Any, **_: Any
    ) -> Any:
        return CannedResponse(self._headers(), self.chunks)


def make_case(name: str) -> Callable[[], Awaitable[None]]:
    kind = name.split("_")[0]
    stream = name.endswith("_stream")
    adapter: OpenAIAdapter | AnthropicAdapter
    if kind == "openai":
        adapter, template = OpenAIAdapter(base_url="http://127.0.0.1:1/v1"), OPENAI_INTENT
        chunks = OPENAI_EVENTS if stream else [OPENAI_BODY]
    else:
        adapter, template = AnthropicAdapter(base_url="http://127.0.0.1:1"), ANTHROPIC_INTENT
        chunks = ANTHROPIC_EVENTS if stream else [ANTHROPIC_BODY]
    client = PooledClient(CannedPool(kind, chunks, stream=stream), timeout=adapter.timeout)

    numbers = itertools.count()

    async def one() -> None:
        # Each request its own intent, as the proxy parses one per request: the same system prompt (when the
        # case has one), a user message of its own.
        *head, last = template.messages
        question = ChatMessage(last.role, f"{last.content} (request {next(numbers)})")
        intent = attrs.evolve(template, messages=(*head, question))
        adapter.estimate(intent)  # the budget hold, before the call
        if stream:
            usage = None
            async with adapter.open_stream(client, intent, KEY) as events:
                async for _ in events:
                    pass
                usage = events.usage
        else:
            usage = (await adapter.complete(client, intent, KEY)).response.usage
        assert usage is not None
        adapter.cost(intent.model, usage)  # settlement

    return one


async def run(case: Callable[[], Awaitable[None]], requests: int) -> float:
    for _ in range(50):  # warm: tokenizer loaded, memos filled
        await case()
    cpu0 = time.process_time()
    for _ in range(requests):
        await case()
    return (time.process_time() - cpu0) / requests * 1e6


async def bench(only: tuple[str, ...], requests: int, rounds: int) -> dict[str, float]:
    cases = {name: make_case(name) for name in only}
    seen: dict[str, list[float]] = {name: [] for name in only}
    for i in range(rounds):
        for name, case in cases.items():
            seen[name].append(await run(case, requests))
        print(f"round {i + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in seen.items()), flush=True)
    return {f"{name}_cpu_us": round(statistics.median(values), 1) for name, values in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round instead")
    args = parser.parse_args()
    only = tuple(name for name in CASES if args.only is None or name in args.only.split(","))
    if args.profile:
        profiler = cProfile.Profile()

        async def profiled() -> None:
            for name in only:
                case = make_case(name)
                await run(case, 50)
                profiler.enable()
                await run(case, args.requests)
                profiler.disable()

        trio.run(profiled)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        return
    result: dict[str, Any] = trio.run(bench, only, args.requests, args.rounds)
    result["requests"], result["rounds"] = args.requests, args.rounds
    print(json.dumps(result))


if __name__ == "__main__":
    main()
