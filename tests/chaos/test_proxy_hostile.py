"""The standalone process (`run_standalone`, what `apikeyrouter serve` runs) against a hostile upstream, over
real sockets at both ends: every answer is a 200 or an error in the OpenAI shape, within the request deadline;
`GET /state` and the debug channel show nothing in flight or held afterwards; the next request succeeds."""

from __future__ import annotations

import httpx
import pytest
import trio

from apikeyrouter.config import parse_config
from tests.chaos.env import (
    ADMIN,
    CLIENT,
    assert_openai_error,
    serve_data,
    serving,
    short_tempdir,
    sse_events,
    wait_released_http,
)
from tests.chaos.hostile import Answer, Close, HostileServer, Send, Stall
from tests.chaos.scenarios import (
    ANY_OUTCOME,
    DEADLINE,
    FOREVER,
    GOOD_EVENTS,
    IDS,
    MARGIN,
    SCENARIOS,
    SSE_HEAD,
    Scenario,
    barrage,
    healthy,
    request_body,
)


def proxy_outcome(response: httpx.Response, stream: bool) -> str:
    """ "ok", "deadline", or the failure class the error names (its `code`), from the HTTP answer."""
    if response.status_code == 200 and stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.content)
        assert events and events[-1] == "[DONE]", response.content[-300:]
        errors = [e["error"] for e in events[:-1] if isinstance(e, dict) and "error" in e]
        return str(errors[0]["code"]) if errors else "ok"
    if response.status_code == 200:
        assert response.json()["object"] == "chat.completion"
        return "ok"
    error = assert_openai_error(response)
    if (response.status_code, error["code"]) == (503, "no_key_available"):
        return "NoKeyAvailable"  # every key benched by what the upstream did (breakers, throttles)
    assert response.status_code in (502, 504), (response.status_code, error)  # upstream failures only
    return "deadline" if error["code"] == "deadline_exceeded" else str(error["code"])


def expected(scenario: Scenario) -> set[str]:
    return {o.rpartition(":")[2] for o in scenario.outcomes}


async def post(http: httpx.AsyncClient, stream: bool) -> tuple[str, float]:
    start = trio.current_time()
    with trio.fail_after(DEADLINE + MARGIN):
        response = await http.post("/v1/chat/completions", headers=CLIENT, json=request_body(stream))
    return proxy_outcome(response, stream), trio.current_time() - start


async def set_state(http: httpx.AsyncClient, key_id: str, state: str) -> None:
    response = await http.post(f"/keys/{key_id}/state", headers=ADMIN, json={"state": state, "reason": "chaos"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
async def test_the_proxy_answers_a_hostile_upstream_in_the_openai_shape(scenario: Scenario) -> None:
    server = HostileServer(scenario.answer)
    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(server.serve)
        with short_tempdir() as sockets, trio.fail_after(DEADLINE * 5):
            async with serving(parse_config(serve_data(upstream, sockets), env={})) as started:
                socket = started.debug_socket
                assert socket is not None
                async with httpx.AsyncClient(base_url=started.url) as http:
                    await set_state(http, "spare", "disabled")
                    outcome, _ = await post(http, scenario.stream)
                    assert outcome in expected(scenario), (outcome, len(server.seen))
                    await wait_released_http(http, socket)

                    server.script = healthy
                    await set_state(http, "spare", "active")
                    assert (await post(http, scenario.stream))[0] == "ok"
                    await wait_released_http(http, socket)
                    assert (await http.get("/health")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_concurrent_requests_meeting_every_hostility_at_once_all_get_an_answer() -> None:
    server = HostileServer(barrage())
    allowed = {o.rpartition(":")[2] for o in ANY_OUTCOME} | {"deadline"}
    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(server.serve)
        with short_tempdir() as sockets, trio.fail_after(DEADLINE * 5):
            async with serving(parse_config(serve_data(upstream, sockets), env={})) as started:
                assert started.debug_socket is not None
                limits = httpx.Limits(max_connections=64)
                async with httpx.AsyncClient(base_url=started.url, limits=limits) as http:
                    await set_state(http, "spare", "disabled")
                    outcomes: list[str] = []

                    async def one(stream: bool) -> None:
                        outcomes.append((await post(http, stream))[0])

                    async with trio.open_nursery() as callers:
                        for i in range(32):
                            callers.start_soon(one, i % 2 == 0)
                    assert set(outcomes) <= allowed, outcomes
                    await wait_released_http(http, started.debug_socket)

                    server.script = healthy
                    await set_state(http, "spare", "active")
                    for stream in (False, True):
                        assert (await post(http, stream))[0] == "ok"
                    await wait_released_http(http, started.debug_socket)
        nursery.cancel_scope.cancel()


async def test_a_client_leaving_a_stalled_stream_releases_its_key_and_hold() -> None:
    stalled = Answer((Send(SSE_HEAD + GOOD_EVENTS[0]), Stall(FOREVER), Close()))
    server = HostileServer(lambda seen: stalled)
    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(server.serve)
        with short_tempdir() as sockets, trio.fail_after(DEADLINE * 5):
            data = serve_data(upstream, sockets)
            data["providers"][0]["read_timeout"] = FOREVER  # only the client's leaving can end these streams
            async with serving(parse_config(data, env={})) as started:
                assert started.debug_socket is not None
                async with httpx.AsyncClient(base_url=started.url) as http:
                    for _ in range(3):
                        body = request_body(True)
                        async with http.stream("POST", "/v1/chat/completions", headers=CLIENT, json=body) as r:
                            assert r.status_code == 200
                            async for part in r.aiter_bytes():
                                assert b"data: " in part
                                break  # the first chunk arrived; the client hangs up on the stalled rest
                    await wait_released_http(http, started.debug_socket)
                    server.script = healthy
                    assert (await post(http, True))[0] == "ok"
        nursery.cancel_scope.cancel()
