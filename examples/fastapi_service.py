"""A FastAPI service (uvicorn, asyncio) embedding the router through `apikeyrouter.aio`.

    python examples/fastapi_service.py            # a short tour: start, three requests, stop
    python examples/fastapi_service.py --serve    # serve on 127.0.0.1:8000 until Ctrl-C

The router's trio runtime runs as a guest on uvicorn's asyncio loop (same thread). The upstream is the
simulated provider (`apikeyrouter.sim`), which is a trio server: it runs in a thread of its own here,
standing in for a real provider across the network. Endpoints:

    POST /chat          {"model": ..., "messages": [...]} -> the answer, the key used, the cost, why
    POST /chat/stream   the same, as server-sent events: who serves it, then the deltas, then the cost
    GET  /keys          the router's key table (lifecycle, capacity, breaker, in-flight, spend)
    GET  /budgets       every budget's limit, spend and holds

A client that leaves cancels its request: the handler's asyncio task is cancelled, which cancels the
trio request, which releases the key's reservation and the budget hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import structlog
import trio
import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from apikeyrouter import (
    ApiKeyRouterError,
    BudgetExceeded,
    InvalidRequest,
    NoKeyAvailable,
    RouterNotRunning,
    UnknownModel,
    UpstreamError,
    aio,
)
from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.sim import SimServer, parse_sim_config

T = TypeVar("T")
DEADLINE_S = 30.0  # the service's own deadline per request
STATUS = [  # the router's typed errors, as HTTP statuses (most specific first)
    (RouterNotRunning, 503),
    (NoKeyAvailable, 503),
    (BudgetExceeded, 429),
    (UnknownModel, 404),
    (InvalidRequest, 400),
    (UpstreamError, 502),
    (ApiKeyRouterError, 500),
]


@contextmanager
def simulator(config: dict[str, Any] | None = None) -> Iterator[str]:
    """The simulated provider in a thread (its own trio run); yields its OpenAI base URL."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        sim = SimServer(parse_sim_config(config or {}))
        async with trio.open_nursery() as nursery:
            box["port"] = await nursery.start(sim.serve, "127.0.0.1", 0)
            box["token"], box["stop"] = trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel
            started.set()

    thread = threading.Thread(target=trio.run, args=(run,), name="simulator", daemon=True)
    thread.start()
    started.wait()
    try:
        yield f"http://127.0.0.1:{box['port']}/v1"
    finally:
        box["token"].run_sync_soon(box["stop"])
        thread.join()


def create_app(router: aio.AsyncRouter) -> FastAPI:
    app = FastAPI(title="apikeyrouter over asyncio")

    @app.exception_handler(ApiKeyRouterError)
    async def router_error(request: Request, exc: ApiKeyRouterError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        headers = {}
        if isinstance(exc, NoKeyAvailable) and exc.retry_after is not None:
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status, headers=headers)

    @app.exception_handler(TimeoutError)
    async def deadline(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"error": "Timeout", "message": f"no answer within {DEADLINE_S} s"}, 504)

    @app.post("/chat")
    async def chat(request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        response = await unless_disconnected(request, router.route(body, client=request.headers.get("x-client")))
        if response is None:
            return Response(status_code=499)  # nobody is listening; the request was cancelled
        meta = response.metadata
        assert meta is not None
        return {
            "content": response.content,
            "key": meta.key_used,
            "attempts": meta.attempts,
            "cost": str(meta.cost),
            "why": meta.decision.explanation,
        }

    @app.post("/chat/stream")
    async def chat_stream(body: dict[str, Any] = Body(...)) -> StreamingResponse:  # noqa: B008
        events = sse_events(router, body)
        first = await anext(events)  # opens the stream: errors before its first chunk get a status here
        return StreamingResponse(prepend(first, events), media_type="text/event-stream")

    @app.get("/keys")
    async def keys() -> list[dict[str, Any]]:
        return router.keys()  # a sync view: the guest run shares this thread

    @app.get("/budgets")
    async def budgets() -> dict[str, Any]:
        return router.budgets()

    return app


async def unless_disconnected(request: Request, call: Awaitable[T]) -> T | None:
    """Run `call` under the service's deadline; if the client hangs up first, cancel it (the trio
    request is cancelled with it) and return None."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async with asyncio.timeout(DEADLINE_S):
        work, watch = asyncio.ensure_future(call), asyncio.ensure_future(hung_up())
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
            await asyncio.wait((work, watch))  # the cancelled route returns once it has cleaned up
        return None if work.cancelled() else work.result()


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def sse_events(router: aio.AsyncRouter, intent: dict[str, Any]) -> AsyncIterator[str]:
    async with asyncio.timeout(DEADLINE_S), router.stream(intent) as stream:
        meta = stream.metadata
        assert meta is not None
        yield sse({"key": meta.key_used, "attempts": meta.attempts, "why": meta.decision.explanation})
        async for chunk in stream:
            yield sse({"delta": chunk.delta})
    final = stream.final_metadata
    yield sse({"done": True, "cost": str(final.cost) if final is not None else None})


async def prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item


@asynccontextmanager
async def serving(app: FastAPI, port: int = 0) -> AsyncIterator[str]:
    """uvicorn on 127.0.0.1 in this loop; yields its base URL, stops it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it failed to start: why
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def service(upstream: str, port: int = 0) -> AsyncIterator[tuple[aio.AsyncRouter, str]]:
    """The router (two keys on the simulator, a $1 budget on the first) and the app serving it."""
    async with aio.open_router(objective="reliability", max_attempts=2) as router:
        await router.register_provider("openai", OpenAIAdapter(base_url=upstream))
        await router.register_key("sk-sim-primary", "openai", key_id="primary", budget=Decimal("1"))
        await router.register_key("sk-sim-secondary", "openai", key_id="secondary")
        async with serving(create_app(router), port) as url:
            yield router, url


async def tour() -> None:
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
    with simulator() as upstream:
        async with service(upstream) as (router, url), httpx.AsyncClient(base_url=url) as client:
            answer = (await client.post("/chat", json=chat)).json()
            print(f"POST /chat: key={answer['key']} cost=${answer['cost']}")
            print(f"    why: {answer['why']}")
            deltas = []
            async with client.stream("POST", "/chat/stream", json=chat) as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        deltas.append(json.loads(line[6:]).get("delta", ""))
            print(f"POST /chat/stream: {''.join(deltas)[:50]!r}")
            for key in (await client.get("/keys")).json():
                print(f"GET /keys: {key['id']:<9} {key['lifecycle']}, in flight {key['in_flight']}")
            print(f"router.budgets(): {router.budgets()}")


async def serve_forever() -> None:
    with simulator() as upstream:
        async with service(upstream, 8000) as (_, url):
            print(f"serving on {url} (Ctrl-C to stop)")
            await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve on 127.0.0.1:8000 until Ctrl-C")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(serve_forever() if parser.parse_args().serve else tour())
