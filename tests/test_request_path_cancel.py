"""Cancel-safety of the request path on virtual time: whatever point a caller leaves at (its deadline, a
client disconnect), every key reservation and every budget hold the request took is given back, once."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal

import trio
import trio.testing

from apikeyrouter.runtime import ApiKeyRouter
from tests.routing_env import chat
from tests.sim_transport import sim_env

BUDGET = {"budgets": {"global": {"limit": "100", "period": "day"}}, "routing": {"objective": "quality"}}
# "flaky" ranks first and always fails (5xx), so a request also crosses a failover; "slot" settles by ask
# (it has an in-flight limit), "plain" by tell.
KEYS = [
    ("flaky", "sk-sim-flaky", {"metadata": {"quality": "premium"}, "max_in_flight": 4}),
    ("slot", "sk-sim-slot", {"metadata": {"quality": "premium"}, "max_in_flight": 1}),
    ("plain", "sk-sim-plain", {}),
]
SIM_KEYS = [{"key": "sk-sim-flaky", "error_rate": 1.0}]
SIM = {"latency_ms": 100, "chunk_delay_ms": 10}


async def nothing_held(router: ApiKeyRouter) -> None:
    await trio.testing.wait_all_tasks_blocked()  # settlements are tells: let the actors take them in
    assert {k["id"]: k["in_flight"] for k in router.keys()} == {"flaky": 0, "slot": 0, "plain": 0}
    assert Decimal(router.budgets()["global"]["reserved"]) == 0


async def cancelled_after_checkpoints(n: int, request: Callable[[], Awaitable[object]]) -> None:
    """Run `request`, cancelling it after `n` scheduler passes of a helper task: a sweep over `n` lands
    the cancellation on every await of the request path, the shielded ones' exits included."""
    async with trio.open_nursery() as nursery:

        async def cancel_later() -> None:
            for _ in range(n):
                await trio.lowlevel.cancel_shielded_checkpoint()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_later)
        with contextlib.suppress(Exception):  # an upstream error or a refusal: fine, if nothing stays held
            await request()
        nursery.cancel_scope.cancel()


async def test_a_route_cancelled_at_any_await_gives_back_its_reservation_and_hold(autojump_clock: object) -> None:
    async with sim_env(KEYS, sim_keys=SIM_KEYS, sim_defaults=SIM, config=BUDGET) as env:
        for n in range(120):
            await cancelled_after_checkpoints(n, lambda: env.router.route(chat("hi")))
            await nothing_held(env.router)
        for step in range(0, 260, 5):  # deadlines across both upstream calls (100 ms each)
            with trio.move_on_after(step / 1000):
                await env.router.route(chat("hi"))
            await nothing_held(env.router)


async def test_a_stream_cancelled_at_any_await_gives_back_its_reservation_and_hold(autojump_clock: object) -> None:
    async with sim_env(KEYS, sim_keys=SIM_KEYS, sim_defaults=SIM, config=BUDGET) as env:

        async def read_all() -> None:
            async with env.router.stream(chat("stream me")) as handle:
                async for _chunk in handle:
                    pass

        for n in range(160):
            await cancelled_after_checkpoints(n, read_all)
            await nothing_held(env.router)
        for step in range(0, 400, 5):  # deadlines across the failover, the first chunk and the rest
            with trio.move_on_after(step / 1000):
                await read_all()
            await nothing_held(env.router)


async def test_a_call_granted_before_its_key_was_replaced_does_not_settle_the_new_keys_reservation(
    autojump_clock: object,
) -> None:
    # A reload that changes a key removes it and registers it again: a new actor at a new address, whose
    # reservation ids started again from the same numbers. The call granted by the old actor used to
    # settle by key id, so it freed the new actor's lease of the same number: a call still in flight
    # stopped counting, and the key's in-flight limit let one more in.
    async with sim_env([("k", "sk-sim-k", {"max_in_flight": 1})], sim_defaults={"latency_ms": 1000}) as env:
        router = env.router
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.route, chat("granted by the old actor"))
            await trio.sleep(0.5)
            await router.remove_key("k")
            await router.register_key("sk-sim-k", "openai", key_id="k", max_in_flight=1)
            nursery.start_soon(router.route, chat("granted by the new actor"))
            await trio.sleep(0.6)  # t = 1.1: the first call has ended, the second runs until 1.5
            key = router.key("k")
            assert key is not None and key["in_flight"] == 1
        await trio.testing.wait_all_tasks_blocked()
        key = router.key("k")
        assert key is not None and key["in_flight"] == 0
        assert trio.current_time() == 1.5
