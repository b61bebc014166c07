"""`apikeyrouter.aio`: the router from asyncio (FastAPI, aiohttp), the trio runtime in guest mode.

    async with aio.open_router(config) as router:          # inside a running asyncio loop
        response = await router.route({...})               # the deadline: asyncio.timeout(...)
        async with router.stream({...}) as stream:         # or: async for chunk in router.route_stream(...)
            async for chunk in stream: ...

`open_router` starts a trio run as a guest of the running asyncio loop (`trio.lowlevel.start_guest_run`):
trio's tasks run on the loop's own thread, in callbacks the loop schedules; only trio's wait for I/O sits
in a helper thread of trio's. Inside the guest run, the trio `ApiKeyRouter` runs with a nursery of calls.

Crossing over: each asyncio call becomes one trio task in that nursery, started through the run's
`TrioToken.run_sync_soon` (thread-safe, and it wakes trio when trio is waiting for I/O: a plain call
from asyncio would not). The trio task resolves the caller's asyncio future directly: trio's tasks run
on the loop's thread, so that is the loop's own thread touching its own future. At most `max_calls`
calls (streams included, while open) are inside at once; more wait their turn in asyncio, where their
own cancellation applies.

Cancellation both ways:
- the asyncio caller cancelled (`asyncio.timeout`, `wait_for`, a client gone) cancels the call's trio
  cancel scope, and the caller's `CancelledError` is raised only once the trio task has finished: the
  key's reservation is released and the budget hold freed by then (the trio request path's cleanup is
  bounded by its own graces);
- the runtime stopping (leaving the `async with`) or crashing fails every pending call with
  `RouterNotRunning`, and calls after it raise `RouterNotRunning` at once; a crash is raised again
  when the `async with` exits.

The asyncio deadline is not visible to the router (asyncio has no public "current deadline"): a request
that finds no key ready waits up to `max_wait` seconds (an `open_router` argument, 60 s by default) for
one to recover, unless the asyncio deadline cancels it first.

The sync views (`keys()`, `key()`, `budgets()`, `decisions()`, `get_state_summary()`, ...) are the trio
facade's, called directly: between two trio ticks every trio task is parked at a checkpoint and the
board holds immutable snapshots, so reading them from asyncio code on the same thread is safe, and
trio's clock (`trio.current_time()`) is readable from the host while the guest run lives. One guest run
per thread: one `aio.open_router` per asyncio loop at a time.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Generic, TypeVar

import outcome
import trio

from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.config import RouterConfig
from apikeyrouter.domain.request import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse
from apikeyrouter.errors import RouterNotRunning
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.runtime.api import APIKey
from apikeyrouter.runtime.open import Objective
from apikeyrouter.runtime.policies import RequestPolicy
from apikeyrouter.secret import Secret

__all__ = ["STREAM_BUFFER", "AsyncRouter", "AsyncStream", "open_router"]

T = TypeVar("T")
Intent = RequestIntent | Mapping[str, Any]
STREAM_BUFFER = 8  # chunks a stream holds for a slow asyncio consumer before the trio side waits


class _Call(Generic[T]):
    """One asyncio call inside the guest run: its future (resolved by the trio task) and cancel scope."""

    __slots__ = ("abandoned", "fn", "future", "scope", "what")

    def __init__(self, fn: Callable[[], Awaitable[T]], future: asyncio.Future[T], what: str) -> None:
        self.fn = fn
        self.what = what  # for errors: "route()"
        self.future = future
        self.scope: trio.CancelScope | None = None
        self.abandoned = False  # the asyncio caller left: cancelled, not failed

    def resolve(self, result: outcome.Value[T] | BaseException) -> None:
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result.value)

    def cancel_in_trio(self) -> None:  # in the guest run, via run_sync_soon
        if self.scope is not None:
            self.scope.cancel(reason="the asyncio caller was cancelled")


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for `future` to be done, whatever cancels the waiting task meanwhile (the trio side's
    cleanup is bounded, so this is too); the caller re-raises its own CancelledError afterwards."""
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            continue
    if not future.cancelled():
        future.exception()  # retrieved: the caller has left, nobody else will look at it


class _Bridge:
    """Both sides of the guest run: asyncio submits calls, trio runs each in its own task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, router: ApiKeyRouter, max_calls: int) -> None:
        self.loop = loop
        self.router = router
        self.slots = asyncio.Semaphore(max_calls)
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[outcome.Outcome[None]] = loop.create_future()
        self.accepting = False
        self.alive = True  # the guest run exists: trio's clock is readable
        self.token: trio.lowlevel.TrioToken | None = None  # set once the guest run exists
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._main_scope = trio.CancelScope()

    # -- trio side ------------------------------------------------------------------------------------

    async def main(self) -> None:
        """The guest run: the router, and a nursery of calls inside it (cancelled first on the way out,
        so pending calls fail while the router can still release what they hold)."""
        with self._main_scope:
            async with self.router:
                try:
                    async with trio.open_nursery() as calls:
                        self._nursery = calls
                        self.accepting = True
                        self.ready.set_result(None)
                        await self._stop.wait()
                        self.accepting = False
                        calls.cancel_scope.cancel(reason="the router is stopping")
                finally:  # no new call may reach a closed nursery
                    self.accepting = False

    def _spawn(self, call: _Call[Any]) -> None:  # via run_sync_soon: must never raise
        if not self.accepting or self._nursery is None:
            call.resolve(RouterNotRunning(call.what))
            return
        self._nursery.start_soon(self._serve, call)

    async def _serve(self, call: _Call[Any]) -> None:
        try:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.abandoned:
                    scope.cancel(reason="the asyncio caller was cancelled")
                try:
                    value = await call.fn()
                except Exception as exc:
                    call.resolve(exc)
                else:
                    call.resolve(outcome.Value(value))
        finally:  # cancelled: by its caller (abandoned) or by the runtime stopping
            if call.abandoned and not call.future.done():
                call.future.cancel()
            call.resolve(RouterNotRunning(f"{call.what} (the router stopped while it was pending)"))

    def _request_stop(self) -> None:  # via run_sync_soon
        if not self.ready.done():  # still starting: give up starting
            self._main_scope.cancel(reason="the router was stopped while starting")
        self._stop.set()

    def finished(self, result: outcome.Outcome[None]) -> None:
        """start_guest_run's done_callback: runs in the guest's last tick, on the loop's thread."""
        self.alive = self.accepting = False
        if not self.ready.done():
            self.ready.set_exception(
                result.error if isinstance(result, outcome.Error) else RouterNotRunning("starting the router")
            )
        self.done.set_result(result)

    # -- asyncio side ---------------------------------------------------------------------------------

    def soon(self, fn: Callable[..., object], *args: object) -> bool:
        """Run `fn(*args)` in the guest run soon; False once the run is over."""
        if self.token is None or not self.alive:
            return False
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def submit(self, fn: Callable[[], Awaitable[T]], what: str) -> _Call[T]:
        call = _Call(fn, self.loop.create_future(), what)
        if not self.accepting or not self.soon(self._spawn, call):
            call.resolve(RouterNotRunning(what))
        return call

    async def abandon(self, call: _Call[Any]) -> None:
        """The asyncio caller leaves: cancel the trio task and wait until it has cleaned up."""
        if not call.future.done():
            call.abandoned = True
            self.soon(call.cancel_in_trio)
        await _settled(call.future)

    async def run(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        async with self.slots:
            call = self.submit(fn, what)
            try:
                return await asyncio.shield(call.future)
            except asyncio.CancelledError:
                await self.abandon(call)
                raise

    def stop(self) -> None:
        self.accepting = False
        self.soon(self._request_stop)


class AsyncStream:
    """An open routed stream on the asyncio side: `async for chunk in stream`. `metadata` (key, attempts,
    decision) is known once it is open; `final_metadata` adds the settled cost after the last chunk.
    The trio side holds at most `STREAM_BUFFER` chunks the consumer has not taken: a slow consumer
    slows the upstream read, nothing piles up."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._buffer: collections.deque[StreamChunk] = collections.deque()
        self._opened: asyncio.Future[None] = bridge.loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._room: trio.Event | None = None
        self._call: _Call[None] | None = None
        self.metadata: ResponseMetadata | None = None
        self.final_metadata: ResponseMetadata | None = None

    @property
    def buffered(self) -> int:
        """Chunks read from upstream that the consumer has not taken yet (at most `STREAM_BUFFER`)."""
        return len(self._buffer)

    # -- trio side ------------------------------------------------------------------------------------

    async def _pump(
        self,
        router: ApiKeyRouter,
        intent: Intent,
        objective: Objective,
        client: str | None,
        policy: RequestPolicy | None,
    ) -> None:
        async with router.stream(intent, objective=objective, client=client, policy=policy) as handle:
            self.metadata = handle.metadata
            self._opened.set_result(None)
            async for chunk in handle:
                while len(self._buffer) >= STREAM_BUFFER:
                    room = self._room = trio.Event()
                    await room.wait()
                self._buffer.append(chunk)
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(None)
        self.final_metadata = handle.final_metadata

    def _free_room(self) -> None:  # via run_sync_soon
        room, self._room = self._room, None
        if room is not None:
            room.set()

    # -- asyncio side ---------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        assert self._call is not None, "an AsyncStream comes from AsyncRouter.stream()"
        done = self._call.future
        while not self._buffer:
            if done.done():
                done.result()  # the stream's error (StreamInterrupted, RouterNotRunning, ...), if any
                raise StopAsyncIteration
            self._waiter = self._bridge.loop.create_future()
            await asyncio.wait((self._waiter, done), return_when=asyncio.FIRST_COMPLETED)
        chunk = self._buffer.popleft()
        if self._room is not None:
            self._bridge.soon(self._free_room)
        return chunk


class AsyncRouter:
    """The router's asyncio face; get one from `aio.open_router(config)`. Async methods cross into the
    trio runtime (one trio task per call); the views read the trio router's state directly."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._router = bridge.router

    @property
    def running(self) -> bool:
        return self._bridge.accepting and self._router.running

    @property
    def config(self) -> RouterConfig:
        return self._router.config

    @property
    def trio_router(self) -> ApiKeyRouter:
        """The trio facade itself: its sync views are safe here; its async methods are trio code (call
        them through `run_trio`)."""
        return self._router

    async def run_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a trio async function in the router's guest run, with cancellation crossing as for `route`."""
        return await self._bridge.run(lambda: fn(*args), "run_trio()")

    # -- requests -------------------------------------------------------------------------------------

    async def route(
        self,
        intent: Intent,
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> SystemResponse:
        """`ApiKeyRouter.route` from asyncio; the deadline is the caller's (`asyncio.timeout(...)`).
        `policy`: the request's own policies (scope `request`), as for the trio API."""
        return await self._bridge.run(
            lambda: self._router.route(intent, objective=objective, client=client, policy=policy), "route()"
        )

    @asynccontextmanager
    async def stream(
        self,
        intent: Intent,
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> AsyncIterator[AsyncStream]:
        """Open a routed stream; leaving the block closes the upstream stream (and settles what it used)
        before the block's exit returns."""
        bridge = self._bridge
        async with bridge.slots:
            stream = AsyncStream(bridge)
            call = stream._call = bridge.submit(
                lambda: stream._pump(self._router, intent, objective, client, policy), "stream()"
            )
            try:
                await asyncio.wait((stream._opened, call.future), return_when=asyncio.FIRST_COMPLETED)
                if not stream._opened.done():
                    call.future.result()  # it failed before its first chunk: that error
                yield stream
            finally:
                await bridge.abandon(call)

    async def route_stream(
        self,
        intent: Intent,
        *,
        objective: Objective = None,
        client: str | None = None,
        policy: RequestPolicy | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """`async for chunk in router.route_stream(...)`. Breaking out closes the upstream stream when the
        generator is closed: at once with `contextlib.aclosing(...)`, else when asyncio finalizes it."""
        async with self.stream(intent, objective=objective, client=client, policy=policy) as stream:
            async for chunk in stream:
                yield chunk

    # -- registration and operator commands -----------------------------------------------------------

    async def register_provider(self, provider_id: str, adapter: ProviderAdapter) -> None:
        await self._bridge.run(lambda: self._router.register_provider(provider_id, adapter), "register_provider()")

    async def remove_provider(self, provider_id: str) -> None:
        await self._bridge.run(lambda: self._router.remove_provider(provider_id), "remove_provider()")

    async def register_key(
        self,
        secret: str | Secret,
        provider: str,
        metadata: Mapping[str, str] | None = None,
        *,
        key_id: str | None = None,
        limits: Mapping[str, int] | None = None,
        models: list[str] | None = None,
        max_in_flight: int | None = None,
        budget: Decimal | None = None,
    ) -> APIKey:
        kwargs: dict[str, Any] = {"key_id": key_id, "limits": limits, "models": models}
        kwargs |= {"max_in_flight": max_in_flight, "budget": budget}
        return await self._bridge.run(
            lambda: self._router.register_key(secret, provider, metadata, **kwargs), "register_key()"
        )

    async def remove_key(self, key_id: str) -> None:
        await self._bridge.run(lambda: self._router.remove_key(key_id), "remove_key()")

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        await self._bridge.run(lambda: self._router.update_key_state(key_id, state, reason), "update_key_state()")

    async def rotate_key(self, key_id: str, new_secret: str | Secret) -> None:
        await self._bridge.run(lambda: self._router.rotate_key(key_id, new_secret), "rotate_key()")

    async def revoke_key(self, key_id: str, reason: str = "revoked by operator") -> None:
        await self._bridge.run(lambda: self._router.revoke_key(key_id, reason), "revoke_key()")

    async def apply_config(self, new: RouterConfig) -> dict[str, list[str]]:
        return await self._bridge.run(lambda: self._router.apply_config(new), "apply_config()")

    # -- views (same thread as the guest run: read directly) ------------------------------------------

    def _view(self, name: str) -> ApiKeyRouter:
        if not self._bridge.alive:  # no guest run, no trio clock to render times against
            raise RouterNotRunning(f"{name}()")
        return self._router

    def models(self) -> list[str]:
        return self._view("models").models()

    def ready(self) -> bool:
        return self._bridge.alive and self._router.ready()

    def keys(self) -> list[dict[str, Any]]:
        return self._view("keys").keys()

    def key(self, key_id: str) -> dict[str, Any] | None:
        return self._view("key").key(key_id)

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return self._view("transitions").transitions(key_id, limit)

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._view("decisions").decisions(limit)

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        return self._view("decision").decision(decision_id)

    def budgets(self) -> dict[str, Any]:
        return self._view("budgets").budgets()

    async def shared_budgets(self) -> dict[str, Any]:
        """`budgets()` with every instance's spend from Redis under `[store] kind = "redis"` (one round
        trip, in the router's trio thread), as the trio API's `shared_budgets`; else `budgets()`."""
        return await self._bridge.run(self._router.shared_budgets, "shared_budgets()")

    def get_state_summary(self) -> dict[str, Any]:
        return self._view("get_state_summary").get_state_summary()


@asynccontextmanager
async def open_router(
    config: RouterConfig | None = None, *, max_calls: int = 1024, **kwargs: Any
) -> AsyncIterator[AsyncRouter]:
    """`async with aio.open_router(config) as router:` in a running asyncio loop. `kwargs` are
    `ApiKeyRouter`'s (`objective`, `max_attempts`, `max_wait`, ...); `max_calls` bounds the calls inside
    the runtime at once. Leaving the block fails pending calls with `RouterNotRunning`, stops the
    runtime and waits for it; a runtime that crashed raises its error here."""
    loop = asyncio.get_running_loop()
    bridge = _Bridge(loop, ApiKeyRouter(config, **kwargs), max_calls)
    trio.lowlevel.start_guest_run(
        bridge.main,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=bridge.finished,
        host_uses_signal_set_wakeup_fd=True,  # asyncio owns signal.set_wakeup_fd
    )
    bridge.token = trio.lowlevel.current_trio_token()  # callable from the host once the run is set up
    try:
        await asyncio.wait((bridge.ready,))
        bridge.ready.result()  # the runtime failed to start: its error
        yield AsyncRouter(bridge)
    finally:
        bridge.stop()
        await _settled(bridge.done)
        bridge.done.result().unwrap()
