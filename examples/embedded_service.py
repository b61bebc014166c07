"""A small trio service that embeds the router: failover, explanations and a state summary.

    python examples/embedded_service.py

The service starts the simulated provider in its own nursery with three keys — one rejected (401), one
allowed a single request per minute, one healthy — and prefers them in that order (quality tiers). The
first request fails over from the rejected key; after it, the router knows the tight key has nothing
left (from its rate-limit headers) and routes around it before any 429. Logs go to stderr, warnings only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
import trio

from apikeyrouter import ApiKeyRouter, ResponseMetadata
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.sim import SimServer, parse_sim_config

KEYS = [  # (secret the simulator knows, key id, quality tier)
    ("sk-sim-revoked-upstream", "rejected", "premium"),
    ("sk-sim-tight", "tight", "high"),
    ("sk-sim-healthy", "healthy", "standard"),
]


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 24}


def show(label: str, meta: ResponseMetadata | None) -> None:
    assert meta is not None
    print(f"{label}: key={meta.key_used} attempts={meta.attempts} cost=${meta.cost}")
    print(f"    why: {meta.decision.explanation}")


async def handle(router: ApiKeyRouter, label: str, text: str) -> None:
    """One request of the service: the router picks the key, fails over, and says why."""
    with trio.fail_after(10):  # the caller's deadline covers every attempt
        response = await router.route(chat(text))
    show(label, response.metadata)


async def main() -> None:
    sim = SimServer(
        parse_sim_config(
            {
                "keys": [
                    {"key": "sk-sim-revoked-upstream", "behavior": "invalid"},
                    {"key": "sk-sim-tight", "rpm": 1},
                ]
            }
        )
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        async with ApiKeyRouter(objective="quality", max_attempts=3) as router:
            await router.register_provider("openai", OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1"))
            for secret, key_id, tier in KEYS:
                await router.register_key(secret, "openai", {"quality": tier}, key_id=key_id)

            await handle(router, "request 1", "Hello!")  # rejected -> 401 -> tight
            async with trio.open_nursery() as requests:  # two at once: tight is spent, both take healthy
                requests.start_soon(handle, router, "request 2", "What is trio?")
                requests.start_soon(handle, router, "request 3", "And an actor?")

            text = []
            with trio.fail_after(10):
                async with router.stream(chat("Stream me a sentence.")) as stream:
                    async for chunk in stream:
                        text.append(chunk.delta)
            show("request 4 (streamed)", stream.final_metadata)
            print(f"    text: {''.join(text)[:60]!r}")

            summary = router.get_state_summary()
            print(f"\nstate: objective={summary['objective']} in_flight={summary['in_flight']}")
            for key in summary["keys"]:
                why = key["lifecycle_reason"]
                reason = f" ({why[:40]}{'...' if len(why) > 40 else ''})" if why else ""
                print(
                    f"  {key['id']:<8} {key['lifecycle']}{reason}, capacity {key['capacity']}"
                    f" {key['capacity_left_pct']}%, breaker {key['breaker']}, requests {key['requests']},"
                    f" spend ${key['spend']}"
                )
        nursery.cancel_scope.cancel(reason="service done")


if __name__ == "__main__":
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    trio.run(main)
