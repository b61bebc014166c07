"""Regressions found in review: cancellation during asks, refusals the index cannot see, restarts, reloads."""

from __future__ import annotations

import contextlib

import trio

from apikeyrouter.errors import ApiKeyRouterError
from apikeyrouter.runtime import ApiKeyRouter
from tests.routing_env import chat, routing_env


def decided(router: ApiKeyRouter) -> int:
    """Decisions the router actor has made so far, read from its state in the tree."""
    node = next(c for c in router.tree().children if c.name == "router")
    count: int = node.state["decisions"]
    return count


async def test_request_larger_than_tpm_fails_fast_instead_of_spinning() -> None:
    # The key's tpm is smaller than this request's worst case (input + max_tokens): the key refuses at
    # reservation with retry_at=None, but the index (which checks a 1-token request) still ranks it
    # eligible, so decide() returns retry_at=now and _acquire "waits" for now, clears `refused`, asks
    # the same key again ... forever. It should fail at once (NoKeyAvailable / a typed error).
    async with routing_env([("small", "sk-sim-small", {"limits": {"tpm": 100}})]) as env:
        decisions_before = decided(env.router)
        with trio.move_on_after(2) as cs:
            with contextlib.suppress(ApiKeyRouterError):
                await env.router.route(chat("hi", max_tokens=500))
        spun = decided(env.router) - decisions_before
        assert not cs.cancelled_caught, f"route() spun for 2 s: {spun} decisions for one request"


async def test_cancel_while_asking_for_hold_or_reserve_leaks_nothing() -> None:
    # A caller cancelled after its Hold/Reserve was queued but before the actor answered leaves the
    # budget hold (no lease at all: held forever) and the key lease (up to 605 s, and for a key with
    # max_in_flight the router then excludes it as "at in-flight limit" with no retry time, so no
    # Reserve ever comes to expire the lease: the key is lost for good).
    from decimal import Decimal

    async with routing_env(
        [("k", "sk-sim-k", {})],
        config={"budgets": {"global": {"limit": "100", "period": "day"}}},
    ) as env:

        async def one(ticks: int) -> None:
            with trio.CancelScope() as cs:

                async def cancel_after() -> None:
                    for _ in range(ticks):
                        await trio.lowlevel.checkpoint()
                    cs.cancel()

                async with trio.open_nursery() as n:
                    n.start_soon(cancel_after)
                    try:
                        await env.router.route(chat("hi"))
                    finally:
                        n.cancel_scope.cancel()

        for ticks in range(0, 12):
            await one(ticks)
        await trio.sleep(0.2)
        reserved = Decimal(env.router.budgets()["global"]["reserved"])
        in_flight = [k["in_flight"] for k in env.router.keys()]
        assert reserved == 0 and in_flight == [0], f"leaked: budget reserved {reserved}, key in_flight {in_flight}"


async def test_a_leaked_lease_on_a_max_in_flight_key_loses_the_key_for_good() -> None:
    async with routing_env([("k", "sk-sim-k", {"max_in_flight": 1})]) as env:
        for ticks in range(0, 12):
            with trio.CancelScope() as cs:

                async def cancel_after(ticks: int = ticks) -> None:
                    for _ in range(ticks):
                        await trio.lowlevel.checkpoint()
                    cs.cancel()

                async with trio.open_nursery() as n:
                    n.start_soon(cancel_after)
                    try:
                        await env.router.route(chat("hi"))
                    finally:
                        n.cancel_scope.cancel()
            await trio.sleep(0.05)
            if env.router.keys()[0]["in_flight"]:
                break
        await trio.sleep(0.5)
        # Nothing is running now; the one key should serve. On main: NoKeyAvailable
        # ("k: at in-flight limit (1/1)") for the next 605 s, and in fact forever.
        with trio.fail_after(5):
            response = await env.router.route(chat("after"))
        assert response.metadata is not None and response.metadata.key_used == "k"


async def test_reservation_ids_restart_at_1_after_a_key_restart_so_old_settlements_hit_new_leases() -> None:
    # KeyActor._next_id starts at 0 in every instance. A request in flight across a key restart holds
    # rid 1 of the old instance; the first request after the restart also gets rid 1. When the old one
    # settles it pops the new request's lease: in_flight drops to 0 while that request still runs, so a
    # max_in_flight=1 key takes a second concurrent request (and the outcome lands on the wrong lease).
    from apikeyrouter.messages.key import InjectCrash

    async with routing_env([("k", "sk-sim-k", {"max_in_flight": 1})], sim_defaults={"latency_ms": 300}) as env:

        async def one(text: str) -> None:
            with trio.fail_after(10):
                await env.router.route(chat(text))

        async with trio.open_nursery() as n:
            n.start_soon(one, "a")  # rid 1 of the first instance
            await trio.sleep(0.1)
            await env.router.key_ref("k").tell(InjectCrash("test"))
            await trio.sleep(0.05)  # restarted: in_flight 0, _next_id 0
            n.start_soon(one, "b")  # rid 1 of the new instance
            await trio.sleep(0.2)  # "a" has settled rid 1 by now: that was b's lease
            snap = env.router.key("k")
            assert snap is not None
            assert snap["in_flight"] == 1, f"b is still in flight but the key shows in_flight={snap['in_flight']}"


async def test_a_budget_added_by_a_reload_is_enforced() -> None:
    # apply_config never recomputes _budget_specs nor tells the BudgetActor: budgets (global, provider,
    # or a key's own `budget`) added or lowered by a SIGHUP are silently not enforced.
    from apikeyrouter import BudgetExceeded
    from apikeyrouter.config import parse_config
    from apikeyrouter.runtime import ApiKeyRouter
    from apikeyrouter.sim import SimServer, parse_sim_config

    sim = SimServer(parse_sim_config({}))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        base = {
            "providers": [{"id": "sim", "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}],
            "keys": [{"id": "k", "provider": "sim", "secret": "sk-sim-k"}],
        }
        async with ApiKeyRouter(parse_config(base, env={})) as router:
            await router.route(chat("before"))
            tight = {**base, "budgets": {"global": {"limit": "0", "period": "day"}}}
            await router.apply_config(parse_config(tight, env={}))
            try:
                await router.route(chat("after"))
            except BudgetExceeded:
                pass
            else:
                raise AssertionError("a zero global budget from the reloaded config was not enforced")
        nursery.cancel_scope.cancel()


async def test_a_caller_leaving_mid_stream_is_charged_for_what_it_used() -> None:
    # dispatch.stream()'s caller-left branch reads `upstream.usage` before the provider task has
    # stored the stream's usage (that happens when the upstream context exits, after the settle),
    # so it settles Usage() = 0 tokens and cost 0: the budget and the key's token window never see it.
    from decimal import Decimal

    async with routing_env(
        [("k", "sk-sim-k", {})],
        config={"budgets": {"global": {"limit": "100", "period": "day"}}},
    ) as env:
        long = chat("tell me a long story " * 20, max_tokens=400)
        with trio.CancelScope() as cs:
            async with env.router.stream(long) as handle:
                seen = 0
                async for _chunk in handle:
                    seen += 1
                    if seen == 5:
                        cs.cancel()  # the client disconnects
                        await trio.lowlevel.checkpoint()
        await trio.sleep(0.2)
        spent = Decimal(env.router.budgets()["global"]["spent"])
        assert spent > 0, "the input tokens and 5 chunks the provider billed were settled as cost 0"
