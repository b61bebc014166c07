"""The router from asyncio: `apikeyrouter.aio` under a real uvicorn server and a real asyncio client.

Each scenario runs its own asyncio loop (`asyncio.run` in a plain test function, so pytest-trio's
trio_mode leaves it alone); the router's trio runtime is a guest on that loop. The service is
examples/fastapi_service.py's app over the simulator (a trio server in a thread). Times are real: the
simulator's latency is set far above the bounds the assertions use, so a cancellation that did not cross
over to trio would show up as a reservation still held.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from apikeyrouter import PolicyRejected, RouterNotRunning, aio
from apikeyrouter.adapters import OpenAIAdapter

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fastapi_service", ROOT / "examples" / "fastapi_service.py")
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
sys.modules["fastapi_service"] = example
_spec.loader.exec_module(example)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
SLOW = {"defaults": {"latency_ms": 20_000}}  # an answer far later than any bound below
SLOW_STREAM = {"defaults": {"chunk_delay_ms": 1_000}}  # ~26 chunks: half a minute


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


@asynccontextmanager
async def service(sim: dict[str, Any] | None = None) -> AsyncIterator[tuple[aio.AsyncRouter, httpx.AsyncClient]]:
    """One key ("only", a $1 budget) on the simulator, the example's app in uvicorn, a client on it."""
    with example.simulator(sim) as upstream:
        async with aio.open_router(max_attempts=1) as router:
            await router.register_provider("openai", OpenAIAdapter(base_url=upstream))
            await router.register_key("sk-sim-only", "openai", key_id="only", budget=Decimal("1"))
            async with example.serving(example.create_app(router)) as url, httpx.AsyncClient(base_url=url) as client:
                yield router, client


def in_flight(router: aio.AsyncRouter) -> int:
    return sum(k["in_flight"] for k in router.keys())


def held(router: aio.AsyncRouter) -> Decimal:
    return Decimal(router.budgets()["key:only"]["reserved"])


async def eventually(check: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


def test_a_plain_request_over_http_is_routed_and_settled() -> None:
    async def scenario() -> None:
        async with service() as (router, client):
            answer = await client.post("/chat", json=CHAT, headers={"x-client": "team-a"})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["key"] == "only" and body["attempts"] == 1 and body["content"]
            assert "chose only" in body["why"]
            keys = (await client.get("/keys")).json()
            assert [(k["id"], k["requests"], k["in_flight"]) for k in keys] == [("only", 1, 0)]
            shown = router.budgets()["key:only"]
            assert shown.items() >= {"limit": "1", "spent": body["cost"], "reserved": "0"}.items()
            shared = (await router.shared_budgets())["key:only"]  # no Redis store: the local figures
            assert {f: shared[f] for f in ("limit", "spent", "reserved", "mode")} == {
                f: shown[f] for f in ("limit", "spent", "reserved", "mode")
            }
            assert router.decisions(1)[0]["chosen"] == "only"

    run(scenario)


def test_a_stream_over_http_arrives_as_events_then_its_cost() -> None:
    async def scenario() -> None:
        async with service() as (router, client):
            events = []
            async with client.stream("POST", "/chat/stream", json=CHAT) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
            assert events[0]["key"] == "only"
            deltas = [e["delta"] for e in events[1:-1]]
            assert len(deltas) > aio.STREAM_BUFFER and all(isinstance(d, str) for d in deltas)
            assert events[-1]["done"] is True
            assert router.budgets()["key:only"]["spent"] == events[-1]["cost"] != "0"
            assert in_flight(router) == 0

    run(scenario)


def test_a_slow_consumer_holds_the_stream_to_its_buffer_and_loses_nothing() -> None:
    async def scenario() -> None:
        async with service() as (router, _):
            async with router.stream(CHAT) as stream:
                chunks = [await anext(stream)]
                await eventually(lambda: stream.buffered == aio.STREAM_BUFFER, within=5)
                await asyncio.sleep(0.3)  # the upstream has sent everything by now; the trio side waits for room
                assert stream.buffered == aio.STREAM_BUFFER
                chunks += [chunk async for chunk in stream]
            assert stream.final_metadata is not None and stream.final_metadata.cost > 0
            response = await router.route({**CHAT, "stream": False})
            assert "".join(c.delta for c in chunks).strip() and response.content

    run(scenario)


def test_breaking_out_of_route_stream_closes_the_upstream_stream() -> None:
    async def scenario() -> None:
        async with service(SLOW_STREAM) as (router, _):
            async with aclosing(router.route_stream(CHAT)) as chunks:
                async for _chunk in chunks:
                    assert in_flight(router) == 1 and held(router) > 0
                    break
            # Closed once aclose() returned: nothing to wait for.
            assert in_flight(router) == 0 and held(router) == 0
            assert router.key("only")["requests"] == 1  # type: ignore[index]

    run(scenario)


def test_a_client_that_hangs_up_cancels_its_request_and_releases_the_key() -> None:
    async def scenario() -> None:
        async with service(SLOW) as (router, client):
            pending = asyncio.create_task(client.post("/chat", json=CHAT))
            await eventually(lambda: in_flight(router) == 1, within=5)
            assert held(router) > 0
            pending.cancel()  # the client closes its connection
            with pytest.raises(asyncio.CancelledError):
                await pending
            await eventually(lambda: in_flight(router) == 0, within=2)  # the answer would take 20 s
            assert held(router) == 0
            assert (await client.get("/keys")).json()[0]["in_flight"] == 0

    run(scenario)


def test_a_client_that_leaves_mid_stream_closes_the_upstream() -> None:
    async def scenario() -> None:
        async with service(SLOW_STREAM) as (router, client):
            async with client.stream("POST", "/chat/stream", json=CHAT) as response:
                lines = response.aiter_lines()
                assert (await anext(lines)).startswith("data: ")
                assert in_flight(router) == 1
            await eventually(lambda: in_flight(router) == 0, within=3)  # the stream would take ~25 s
            assert held(router) == 0

    run(scenario)


def test_an_asyncio_deadline_cancels_the_trio_request_before_it_returns() -> None:
    async def scenario() -> None:
        async with service(SLOW) as (router, _):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await router.route(CHAT)
            # route() raised only once the trio side had cleaned up: exact, no waiting.
            assert in_flight(router) == 0 and held(router) == 0
            task = asyncio.create_task(router.route(CHAT))
            await asyncio.sleep(0)  # submitted, not yet started in trio
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert in_flight(router) == 0 and held(router) == 0

    run(scenario)


def test_the_runtime_stopping_fails_pending_calls_with_router_not_running() -> None:
    async def owner(opened: asyncio.Future[aio.AsyncRouter], stop: asyncio.Event, upstream: str) -> None:
        """The router's `async with`, held by a task of its own so it can end while uvicorn serves."""
        async with aio.open_router(max_attempts=1) as router:
            await router.register_provider("openai", OpenAIAdapter(base_url=upstream))
            await router.register_key("sk-sim-only", "openai", key_id="only", budget=Decimal("1"))
            opened.set_result(router)
            await stop.wait()

    async def scenario() -> None:
        with example.simulator(SLOW) as upstream:
            opened: asyncio.Future[aio.AsyncRouter] = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            lifetime = asyncio.create_task(owner(opened, stop, upstream))
            router = await opened
            async with example.serving(example.create_app(router)) as url, httpx.AsyncClient(base_url=url) as client:
                over_http = asyncio.create_task(client.post("/chat", json=CHAT))
                direct = asyncio.create_task(router.route(CHAT))
                await eventually(lambda: in_flight(router) == 2, within=5)
                stop.set()
                await lifetime  # the runtime has stopped
                answer = await over_http
                assert answer.status_code == 503
                assert answer.json()["error"] == "RouterNotRunning"
                with pytest.raises(RouterNotRunning):
                    await direct
                with pytest.raises(RouterNotRunning):  # and after it, at once
                    await router.route(CHAT)
                with pytest.raises(RouterNotRunning):
                    router.keys()
                assert not router.running

    run(scenario)


def test_a_request_policy_crosses_from_asyncio_for_route_and_route_stream() -> None:
    async def scenario() -> None:
        own = {"kind": "routing", "effect": {"objective": "latency"}}
        async with service() as (router, _client):
            response = await router.route(CHAT, policy=own)
            assert response.metadata is not None and response.metadata.decision is not None
            decision = response.metadata.decision
            assert decision.objective == "latency" and "request" in decision.policies
            async with aclosing(router.route_stream(CHAT, policy=own)) as chunks:
                assert [c async for c in chunks]
            latest = router.decisions(1)[0]
            assert latest["objective"] == "latency" and "request" in latest["policies"]
            with pytest.raises(PolicyRejected) as caught:
                await router.route(CHAT, policy={"kind": "routing", "effect": {"objective": "fastest"}})
            assert "policy.effect.objective" in str(caught.value)

    run(scenario)
