"""A request returns only once its key has settled it, so the caller's next request sees the key free."""

from __future__ import annotations

from tests.routing_env import chat, routing_env


async def test_sequential_requests_through_a_key_with_one_slot_never_find_it_busy() -> None:
    # Settling used to be a tell: route() returned before the key had handled it, and the next decision
    # could read a snapshot still showing the call in flight -> "at in-flight limit" -> NoKeyAvailable.
    async with routing_env([("only", "sk-sim-only", {"max_in_flight": 1})]) as env:
        for i in range(50):
            response = await env.router.route(chat(f"n{i}"))
            assert response.metadata is not None and response.metadata.attempts == 1
            only = env.router.key("only")
            assert only is not None and (only["in_flight"], only["requests"]) == (0, i + 1)
        async with env.router.stream(chat("streamed")) as handle:
            async for _ in handle:
                pass
        only = env.router.key("only")
        assert only is not None and (only["in_flight"], only["requests"]) == (0, 51)
