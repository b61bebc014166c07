"""The embedded router (`open_router`) against a hostile upstream on a real socket: whatever the upstream
does, the caller gets a typed answer within its deadline, nothing stays reserved or held, and the next
request, once the upstream behaves, succeeds."""

from __future__ import annotations

import pytest
import trio

from apikeyrouter import open_router
from apikeyrouter.config import parse_config
from tests.chaos.env import call, config_data, config_for, wait_released
from tests.chaos.hostile import Answer, Close, HostileServer, Send, Stall, completion, json_answer
from tests.chaos.scenarios import (
    ANY_OUTCOME,
    DEADLINE,
    FOREVER,
    GOOD_EVENTS,
    IDS,
    KEYS,
    MARGIN,
    SCENARIOS,
    SSE_HEAD,
    Scenario,
    barrage,
    healthy,
    request_body,
)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
async def test_a_hostile_upstream_gets_a_typed_answer_and_leaves_nothing_held(scenario: Scenario) -> None:
    server = HostileServer(scenario.answer)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        with trio.fail_after(DEADLINE * 4):
            async with open_router(config_for(url)) as router:
                await router.update_key_state("spare", "disabled", reason="kept out of the hostile phase")
                outcome, took = await call(router, scenario.stream)
                assert outcome in scenario.outcomes, (outcome, len(server.seen))
                assert took <= DEADLINE + MARGIN, took
                await wait_released(router)

                server.script = healthy
                await router.update_key_state("spare", "active")
                assert await call(router, scenario.stream) == ("ok", pytest.approx(0, abs=DEADLINE))
                await wait_released(router)
        nursery.cancel_scope.cancel()


async def test_concurrent_requests_meeting_every_hostility_at_once_all_end_typed() -> None:
    server = HostileServer(barrage())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        with trio.fail_after(DEADLINE * 4):
            async with open_router(config_for(url)) as router:
                await router.update_key_state("spare", "disabled", reason="kept out of the hostile phase")
                results: list[tuple[str, float]] = []

                async def one(stream: bool) -> None:
                    results.append(await call(router, stream))

                async with trio.open_nursery() as callers:
                    for i in range(32):
                        callers.start_soon(one, i % 2 == 0)
                assert {o for o, _ in results} <= ANY_OUTCOME, results
                assert max(t for _, t in results) <= DEADLINE + MARGIN, results
                await wait_released(router)

                server.script = healthy
                await router.update_key_state("spare", "active")
                for stream in (False, True):
                    assert (await call(router, stream))[0] == "ok"
                await wait_released(router)
        nursery.cancel_scope.cancel()


async def test_a_caller_deadline_mid_stream_over_a_stalled_upstream_releases_everything() -> None:
    stalled = Answer((Send(SSE_HEAD + GOOD_EVENTS[0]), Stall(FOREVER), Close()))
    server = HostileServer(lambda seen: stalled)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        config = config_data(url)
        config["providers"][0]["read_timeout"] = FOREVER  # only the caller's deadline can end these streams
        with trio.fail_after(DEADLINE * 4):
            async with open_router(parse_config(config, env={})) as router:
                for _ in range(3):
                    chunks = 0
                    with trio.move_on_after(0.5) as caller:
                        async with router.stream(request_body(True)) as handle:
                            async for _ in handle:
                                chunks += 1
                    assert caller.cancelled_caught and chunks == 1
                await wait_released(router)
                server.script = healthy
                assert (await call(router, True))[0] == "ok"
        nursery.cancel_scope.cancel()


async def test_requests_queued_behind_keys_at_their_in_flight_limit_end_typed_and_release() -> None:
    slow = Answer((Stall(0.4), *json_answer(200, completion()).steps), keep_alive=True)
    server = HostileServer(lambda seen: slow)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        config = config_data(url, {"k1": KEYS["victim-1"], "k2": KEYS["victim-2"]})
        for key in config["keys"]:
            key["max_in_flight"] = 1
        with trio.fail_after(DEADLINE * 4):
            async with open_router(parse_config(config, env={})) as router:
                results: list[tuple[str, float]] = []

                async def one(deadline: float) -> None:
                    results.append(await call(router, False, deadline))

                async with trio.open_nursery() as callers:
                    for i in range(12):
                        callers.start_soon(one, 0.3 + 0.15 * i)
                assert {o for o, _ in results} <= {"ok", "deadline", "NoKeyAvailable"}, results
                assert "ok" in {o for o, _ in results}
                await wait_released(router)
                assert (await call(router, False))[0] == "ok"
        nursery.cancel_scope.cancel()
