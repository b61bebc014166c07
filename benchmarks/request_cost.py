"""What the router itself costs per request: `route()` end to end with an upstream that answers at once.

    PYTHONPATH=src python benchmarks/request_cost.py [--keys 3] [--requests 3000] [--rounds 5] [--profile]

A running `ApiKeyRouter` (embedded, in this process) with `--keys` keys behind one OpenAI-kind provider
whose adapter's `complete` returns a ready answer (one parsed once at start, with OpenAI's rate-limit
headers as its quota signal, so every settlement learns from headers as it would in production): no
sockets, no JSON, no HTTP. What remains is the routing work a request pays: the token estimate, decide
(RouterActor ask, re-indexing the keys whose snapshot changed), reserve (KeyActor ask), the provider's
client lease and `CallEnded`, settle (the key's windows, breaker, stats, a new snapshot), the
`RequestAttempted` event, the per-request log line (structlog as `serve` configures it, at "info" and at
"debug", rendered to /dev/null) and the Prometheus series the proxy updates per request (`ProxyMetrics`:
`observe`, `served`, and the bus observer of attempts).

Figures are CPU µs per request (`time.process_time()`, the whole process), medians over `--rounds`
rounds of `--requests` sequential requests, the log levels interleaved within each round. Run it in
two checkouts with benchmarks/ab.py (pass this file's absolute path so both sides run the same script)
for a same-run before/after. `--profile` prints a cProfile of one info-level round instead. The last
line is one JSON object: cpu_us {level: µs}, keys, requests, rounds. Target (issue 10): 100-150 µs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from typing import Any

import httpx
import trio

from apikeyrouter import ApiKeyRouter
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.adapters.base import AdapterResult
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.observe import RequestAttempted
from apikeyrouter.observe.logs import configure_logging
from apikeyrouter.observe.metrics import ProxyMetrics
from apikeyrouter.secret import Secret

MODEL = "gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 16}
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
}
HEADERS = {
    "x-ratelimit-limit-requests": "100000000",
    "x-ratelimit-remaining-requests": "99999999",
    "x-ratelimit-limit-tokens": "100000000000",
    "x-ratelimit-remaining-tokens": "99999999000",
    "x-ratelimit-reset-requests": "1ms",
    "x-ratelimit-reset-tokens": "1ms",
}
LEVELS = ("info", "debug")


class ReadyAdapter(OpenAIAdapter):
    """The OpenAI adapter with `complete` answering at once: no client is used, nothing is sent."""

    def __init__(self) -> None:
        super().__init__(base_url="http://127.0.0.1:9/v1")  # the discard port: never contacted
        intent = RequestIntent.from_openai(CHAT)
        signal = self.signal_from(httpx.Headers(HEADERS))
        secret = Secret("sk-bench-ready-0000")
        self._ready = AdapterResult(response=self.normalise(ANSWER, intent, secret, signal), signal=signal)

    async def complete(self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret) -> AdapterResult:
        await trio.lowlevel.checkpoint()  # a real call yields at least once
        return self._ready


async def requests(router: ApiKeyRouter, metrics: ProxyMetrics, n: int) -> float:
    """CPU µs per request over `n` sequential requests, each doing what the proxy does around `route`."""
    clock = trio.current_time
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = clock()
        metrics.in_flight.inc()
        response = await router.route(CHAT)
        meta = response.metadata
        assert meta is not None
        metrics.served(meta.key_used, meta.provider, meta.attempts)
        metrics.in_flight.dec()
        metrics.observe("/v1/chat/completions", 200, clock() - t0)
    return (time.process_time() - cpu0) / n * 1e6


async def bench(args: argparse.Namespace) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {level: [] for level in LEVELS}
    with open("/dev/null", "w") as sink:  # noqa: ASYNC230 - opened once, before anything is measured
        configure_logging("info", "json", sink)
        async with ApiKeyRouter() as router:
            await router.register_provider("openai", ReadyAdapter())
            for i in range(args.keys):
                await router.register_key(f"sk-bench-{i:06d}", "openai", key_id=f"k{i}")
            metrics = ProxyMetrics(router.keys)
            router.events.observe(RequestAttempted, metrics.attempt)
            await requests(router, metrics, 300)  # warm-up: tokenizer, index orders, label children
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                await requests(router, metrics, args.requests)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(35)
                pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
                return out
            for _ in range(args.rounds):
                for level in LEVELS:
                    configure_logging(level, "json", sink)
                    out[level].append(await requests(router, metrics, args.requests))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runs = trio.run(bench, args)
    if args.profile:
        return
    result: dict[str, Any] = {
        "cpu_us": {level: round(statistics.median(v), 1) for level, v in runs.items()},
        "keys": args.keys,
        "requests": args.requests,
        "rounds": args.rounds,
    }
    for level, values in runs.items():
        print(
            f"log level {level:<5}: {result['cpu_us'][level]:7.1f} CPU µs/request  (rounds: "
            + ", ".join(f"{v:.0f}" for v in values)
            + ")"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
