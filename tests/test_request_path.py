"""The request path on virtual time (in-process simulator): typed refusals, the one attempt loop shared by
route() and stream(), release on any exception, client attribution."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio
import trio.testing

from apikeyrouter import BudgetExceeded, InvalidRequest, MalformedResponse, NoKeyAvailable, StreamInterrupted, Usage
from apikeyrouter.domain.refusal import RefusalKind
from apikeyrouter.observe import RequestAttempted
from apikeyrouter.runtime import ApiKeyRouter
from tests.routing_env import chat
from tests.sim_transport import SimAdapter, sim_env

PREMIUM = {"metadata": {"quality": "premium"}}
QUALITY = {"routing": {"objective": "quality"}}


def attempts_of(router: ApiKeyRouter) -> list[tuple[str, str]]:
    return [
        (e.key, "success" if e.failure is None else e.failure.value)
        for e in router.events.recent(kinds=["request.attempt"])
        if isinstance(e, RequestAttempted)
    ]


async def test_budget_exceeded_names_the_budget_and_carries_the_typed_refusal(autojump_clock: object) -> None:
    async with sim_env([("k", "sk-sim-k", {})], config={"budgets": {"global": {"limit": "0", "period": "day"}}}) as env:
        with pytest.raises(BudgetExceeded) as info:
            await env.router.route(chat("over budget"))
        exc = info.value
        assert exc.budget == "global"  # the budget's id, not "budget global"
        [refusal] = exc.refusals
        assert (refusal.key_id, refusal.kind, refusal.budget) == ("k", RefusalKind.BUDGET, "global")
        assert refusal.detail["limit"] == Decimal(0) and refusal.detail["requested"] > 0
        assert str(exc).startswith("budget global: ")
        assert env.sim.stats("sk-sim-k").requests == 0  # refused before anything was sent


async def test_no_key_available_lists_the_typed_refusals_met_at_reservation(autojump_clock: object) -> None:
    # The index ranks the key eligible (it checks a 1-token request); the key itself refuses the second
    # request: the first one, still in flight, holds 600 of its 1,000 tpm until it ends (after the deadline).
    sim_keys = [{"key": "sk-sim-small", "latency_ms": 5000}]
    async with sim_env([("small", "sk-sim-small", {"limits": {"tpm": 1000}})], sim_keys=sim_keys) as env:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.router.route, chat("first", max_tokens=600))
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            with trio.fail_after(1), pytest.raises(NoKeyAvailable) as info:
                await env.router.route(chat("second", max_tokens=600))
            assert trio.current_time() == start  # at once: the key has room only after the deadline
        [refusal] = info.value.refusals
        assert (refusal.key_id, refusal.kind) == ("small", RefusalKind.QUOTA)
        assert refusal.retry_at is not None and refusal.retry_at > start + 1
        assert refusal.detail["window"] == "tpm"
        assert info.value.reasons["small"].startswith("small: tpm: ")


async def test_a_request_no_key_could_ever_fit_is_the_callers_mistake_not_retry_later(autojump_clock: object) -> None:
    # Bigger than the whole tpm of every key that serves the model: waiting cannot help, so a 400 that says
    # why, instead of NoKeyAvailable (429/503 "retry later", which clients would retry for ever).
    keys = [("small", "sk-sim-small", {"limits": {"tpm": 100}}), ("medium", "sk-sim-medium", {"limits": {"tpm": 300}})]
    async with sim_env(keys) as env:
        start = trio.current_time()
        with pytest.raises(InvalidRequest) as info:
            await env.router.route(chat("hi", max_tokens=500))
        assert trio.current_time() == start
        assert info.value.param == "max_tokens"
        assert "needs" in str(info.value) and "limit is 300" in str(info.value)
        assert env.sim.stats("sk-sim-small").requests == env.sim.stats("sk-sim-medium").requests == 0


async def test_route_fails_over_to_the_next_key_within_one_call(autojump_clock: object) -> None:
    async with sim_env(
        [("flaky", "sk-sim-flaky", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-flaky", "error_rate": 1.0}],
        sim_defaults={"latency_ms": 100},
        config=QUALITY,
    ) as env:
        start = trio.current_time()
        response = await env.router.route(chat("one"))
        assert trio.current_time() - start == 0.2  # two upstream calls of 100 ms, nothing else waits
        assert response.metadata is not None
        assert (response.metadata.key_used, response.metadata.attempts) == ("good", 2)
        assert attempts_of(env.router) == [("flaky", "server_error"), ("good", "success")]


async def test_stream_fails_over_before_the_first_chunk(autojump_clock: object) -> None:
    async with sim_env(
        [("flaky", "sk-sim-flaky", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-flaky", "error_rate": 1.0}],
        config=QUALITY,
    ) as env:
        async with env.router.stream(chat("stream me")) as handle:
            assert (handle.metadata.key_used, handle.metadata.attempts) == ("good", 2)
            text = "".join([chunk.delta async for chunk in handle])
        assert text
        assert handle.final_metadata is not None and handle.final_metadata.cost > 0
        assert attempts_of(env.router) == [("flaky", "server_error"), ("good", "success")]
        await trio.testing.wait_all_tasks_blocked()  # settlements are tells: the keys take them in
        assert [k["in_flight"] for k in env.router.keys()] == [0, 0]


async def test_a_stream_cut_after_its_first_chunk_raises_and_settles_what_was_used(autojump_clock: object) -> None:
    async with sim_env(
        [("cut", "sk-sim-cut", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-cut", "cut_stream_after": 3}],
        config=QUALITY,
    ) as env:
        seen = 0
        with pytest.raises(StreamInterrupted):
            async with env.router.stream(chat("stream me", max_tokens=200)) as handle:
                async for _chunk in handle:
                    seen += 1
        assert seen > 0 and handle.metadata.key_used == "cut"  # no failover once chunks were handed over
        assert env.sim.stats("sk-sim-good").requests == 0
        await trio.testing.wait_all_tasks_blocked()
        cut = env.router.key("cut")
        assert cut is not None and cut["in_flight"] == 0 and cut["usage"]["tpm"] > 0


class BrokenPricing(SimAdapter):
    """An adapter whose usage cannot be priced (the provider reported negative token counts)."""

    def cost(self, model: str, usage: Usage) -> Decimal:
        raise ValueError(f"token counts must be >= 0, got {usage}")


async def test_a_cost_computation_error_releases_the_reservation_and_the_hold(autojump_clock: object) -> None:
    # The cost used to be computed outside the try: the error leaked the key's reservation (its one
    # in-flight slot) and the budget hold, and reached the caller as a bare ValueError.
    budgets = {"budgets": {"global": {"limit": "1", "period": "day"}}}
    async with sim_env([], config=budgets) as env:
        await env.router.register_provider("broken", BrokenPricing(env.transport, provider="broken"))
        await env.router.register_key("sk-sim-b", "broken", key_id="b", max_in_flight=1)
        for _ in range(2):  # the second request finds the slot and the budget free again
            with pytest.raises(MalformedResponse) as info:
                await env.router.route(chat("hi"))
            assert info.value.key_id == "b" and "usage not understood" in str(info.value)
            key = env.router.key("b")
            assert key is not None and key["in_flight"] == 0
            assert Decimal(env.router.budgets()["global"]["reserved"]) == 0


async def test_the_client_id_reaches_the_metadata_and_the_attempt_events(autojump_clock: object) -> None:
    async with sim_env([("k", "sk-sim-k", {})]) as env:
        response = await env.router.route(chat("hi"), client="team-a")
        assert response.metadata is not None and response.metadata.client == "team-a"
        async with env.router.stream(chat("hi"), client="team-b") as handle:
            assert handle.metadata.client == "team-b"
            async for _chunk in handle:
                pass
        clients = [
            e.client for e in env.router.events.recent(kinds=["request.attempt"]) if isinstance(e, RequestAttempted)
        ]
        assert clients == ["team-a", "team-b"]


async def test_a_stopping_provider_lets_its_leased_call_finish_before_closing(autojump_clock: object) -> None:
    async with sim_env([("k", "sk-sim-k", {})], sim_defaults={"latency_ms": 1000}) as env:
        async with trio.open_nursery() as nursery:
            responses: list[object] = []

            async def one() -> None:
                responses.append(await env.router.route(chat("slow")))

            nursery.start_soon(one)
            await trio.sleep(0.5)
            start = trio.current_time()
            await env.router.remove_provider("openai")  # the call in flight holds a lease on its client
            assert trio.current_time() - start == 0.5  # it waited for the call, no longer
        assert len(responses) == 1 and env.sim.stats("sk-sim-k").completed == 1


async def test_a_provider_past_its_grace_ends_the_leased_call_instead_of_hanging(autojump_clock: object) -> None:
    config = {"server": {"grace_period": 2.0}}
    async with sim_env([("k", "sk-sim-k", {})], sim_defaults={"latency_ms": 60_000}, config=config) as env:
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def one() -> None:
                try:
                    await env.router.route(chat("hangs"))
                except Exception as exc:
                    failures.append(exc)

            nursery.start_soon(one)
            await trio.sleep(0.5)
            await env.router.remove_provider("openai")
            assert trio.current_time() == 2.5  # the provider's grace, then its leased call was ended
        assert len(failures) == 1 and env.sim.stats("sk-sim-k").disconnects == 1
