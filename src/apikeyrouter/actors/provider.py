"""`ProviderActor`: owns one provider's adapter and its `httpx.AsyncClient` (connection pool), runs the
upstream calls in its own nursery, and judges provider-level health.

A call runs as a task in this actor's nursery, inside a cancel scope linked to the caller: if the caller
leaves (deadline, client disconnect), the scope is cancelled and httpx aborts the request, mid-stream
included. If the actor stops first, the caller is answered with `ActorStopped` instead of hanging. The
client is closed only after the calls in flight have finished (or the supervisor's grace ran out).

Health: when several keys of this provider fail with server-side classes (5xx, overloaded, timeout,
connection) and nothing succeeds, the *provider* is degraded; the router then scores its keys down and
those failures stop counting against each key's own breaker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import assert_never

import attrs
import httpx
import structlog
import trio

from apikeyrouter.actors.base import Actor, Reply
from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.adapters.base import AdapterResult, AdapterStream, ProviderAdapter, QuotaSignal
from apikeyrouter.domain import health as health_rules
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.health import HealthConfig, HealthEvent, ProviderDegraded, ProviderHealth, ProviderRecovered
from apikeyrouter.errors import ActorStopped, StreamInterrupted, UpstreamError
from apikeyrouter.intent import RequestIntent, StreamChunk, Usage
from apikeyrouter.messages.provider import GetProviderSnapshot, ProviderCommand
from apikeyrouter.observe import EventBus, ProviderHealthChanged
from apikeyrouter.secret import Secret

__all__ = ["ForwardedStream", "HealthConfig", "ProviderActor", "ProviderSnapshot"]

log = structlog.get_logger("apikeyrouter.provider")


@attrs.frozen
class ProviderSnapshot:
    id: str
    kind: str
    degraded: bool
    reason: str
    in_flight: int
    requests: int
    failures: int
    models: frozenset[str]
    at: float


class _StreamState:
    __slots__ = ("completed", "error", "upstream", "usage")

    def __init__(self) -> None:
        self.upstream: AdapterStream | None = None  # while open: its usage so far (partial)
        self.usage: Usage | None = None
        self.error: UpstreamError | None = None
        self.completed = False


class ForwardedStream:
    """The caller's side of a stream read by a provider task. `signal` came with the headers."""

    def __init__(
        self, signal: QuotaSignal, recv: trio.MemoryReceiveChannel[StreamChunk], state: _StreamState, provider: str
    ) -> None:
        self.signal = signal
        self._recv = recv
        self._state = state
        self._provider = provider

    @property
    def usage(self) -> Usage | None:
        """Usage so far: final once the stream has ended, else what the open upstream has seen."""
        state = self._state
        if state.usage is not None:
            return state.usage
        return state.upstream.usage if state.upstream is not None else None

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        async for chunk in self._recv:
            if chunk.usage is not None:
                self._state.usage = chunk.usage
            yield chunk
        if self._state.error is not None:
            raise self._state.error
        if not self._state.completed:
            raise StreamInterrupted(
                f"{self._provider}: stream ended because the provider actor stopped",
                failure=FailureClass.CONNECTION,
                provider=self._provider,
            )


class ProviderActor(Actor[ProviderCommand]):
    kind = "provider"

    def __init__(
        self,
        provider_id: str,
        adapter: ProviderAdapter,
        *,
        board: SnapshotBoard,
        events: EventBus,
        health: HealthConfig | None = None,
        stream_buffer: int = 16,
    ) -> None:
        super().__init__(f"provider:{provider_id}", mailbox=64)
        self.provider_id = provider_id
        self.adapter = adapter
        self.health = health or HealthConfig()
        self._board = board
        self._events = events
        self._client: httpx.AsyncClient | None = None
        self._stream_buffer = stream_buffer
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.requests = 0
        self.failures = 0
        self._health = ProviderHealth()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise ActorStopped(self.name, "has no open client")
        return self._client

    async def pre_start(self) -> None:
        self._client = self.adapter.make_client()
        self._publish()

    async def post_stop(self) -> None:
        try:
            await self._idle.wait()  # calls in flight finish first (bounded by the supervisor's grace)
        finally:
            client, self._client = self._client, None
            if client is not None:
                with trio.move_on_after(2) as cs:
                    cs.shield = True
                    await client.aclose()

    def receive(self, msg: ProviderCommand) -> None:
        match msg:
            case GetProviderSnapshot(reply_to=reply):
                reply.send(self.provider_snapshot())
            case _:
                assert_never(msg)

    def state_summary(self) -> ProviderSnapshot:
        return self.provider_snapshot()

    def provider_snapshot(self) -> ProviderSnapshot:
        return ProviderSnapshot(
            id=self.provider_id,
            kind=self.adapter.kind,
            degraded=self.degraded,
            reason=self._health.reason,
            in_flight=self.in_flight,
            requests=self.requests,
            failures=self.failures,
            models=self.adapter.capabilities.models,
            at=trio.current_time(),
        )

    def _publish(self) -> None:
        self._board.publish_provider(self.provider_snapshot())

    # -- upstream calls -------------------------------------------------------------------------------

    def _start_call(self) -> None:
        if self.status != "running" or self._client is None:
            raise ActorStopped(self.name, "is not accepting calls")
        self.in_flight += 1
        self._idle = trio.Event() if self.in_flight == 1 else self._idle

    def _end_call(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def complete(self, intent: RequestIntent, secret: Secret, key_id: str) -> AdapterResult:
        """Run one non-streaming call in this actor's nursery; the caller's cancellation cancels it."""
        self._start_call()
        reply: Reply[AdapterResult] = Reply()
        scope = trio.CancelScope()
        try:
            self.nursery.start_soon(self._call, scope, reply, intent, secret, key_id)
        except BaseException:
            self._end_call()
            raise
        try:
            return await reply.wait()
        finally:
            if not reply.done:  # answered calls are over; cancelling them costs ~6 µs for nothing
                scope.cancel(reason="the caller left")

    async def _call(
        self, scope: trio.CancelScope, reply: Reply[AdapterResult], intent: RequestIntent, secret: Secret, key_id: str
    ) -> None:
        try:
            with scope:
                try:
                    result = await self.adapter.complete(self.client, intent, secret)
                except UpstreamError as exc:
                    exc.key_id = key_id
                    self.record(key_id, exc.failure)
                    reply.fail(exc)
                except Exception as exc:
                    log.error("adapter_bug", provider=self.provider_id, error=f"{type(exc).__name__}: {exc}")
                    reply.fail(exc)
                else:
                    self.record(key_id, None)
                    reply.send(result)
        finally:
            self._end_call()
            if not reply.done:
                reply.fail(ActorStopped(self.name, "stopped during the call"))

    @asynccontextmanager
    async def stream(self, intent: RequestIntent, secret: Secret, key_id: str) -> AsyncIterator[ForwardedStream]:
        """Open a stream read by a task in this actor's nursery; chunks reach the caller through a
        bounded channel (backpressure: a slow caller slows the upstream read, never buffers unboundedly)."""
        self._start_call()
        send, recv = trio.open_memory_channel[StreamChunk](self._stream_buffer)
        opened: Reply[QuotaSignal] = Reply()
        state = _StreamState()
        scope = trio.CancelScope()
        try:
            self.nursery.start_soon(self._stream_call, scope, opened, send, state, intent, secret, key_id)
        except BaseException:
            self._end_call()
            raise
        try:
            signal = await opened.wait()
            yield ForwardedStream(signal, recv, state, self.provider_id)
        finally:
            scope.cancel(reason="the caller left the stream")
            recv.close()

    async def _stream_call(
        self,
        scope: trio.CancelScope,
        opened: Reply[QuotaSignal],
        send: trio.MemorySendChannel[StreamChunk],
        state: _StreamState,
        intent: RequestIntent,
        secret: Secret,
        key_id: str,
    ) -> None:
        try:
            with scope, send:
                try:
                    async with self.adapter.open_stream(self.client, intent, secret) as upstream:
                        state.upstream = upstream
                        opened.send(upstream.signal)
                        try:
                            async for chunk in upstream:
                                await send.send(chunk)
                        finally:
                            state.usage = upstream.usage
                    state.completed = True
                    self.record(key_id, None)
                except UpstreamError as exc:
                    exc.key_id = key_id
                    self.record(key_id, exc.failure)
                    if opened.done:
                        state.error = exc
                    else:
                        opened.fail(exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the caller stopped reading: its scope cancels us anyway
                except Exception as exc:
                    log.error("adapter_bug", provider=self.provider_id, error=f"{type(exc).__name__}: {exc}")
                    if not opened.done:
                        opened.fail(exc)
        finally:
            self._end_call()
            if not opened.done:
                opened.fail(ActorStopped(self.name, "stopped while opening the stream"))

    # -- health ---------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._health.degraded

    def record(self, key_id: str, failure: FailureClass | None) -> None:
        now = trio.current_time()
        self.requests += 1
        if failure is not None:
            self.failures += 1
        self._health, events = health_rules.on_call(self._health, self.health, key_id, failure, now)
        for event in events:
            self._announce(event)
        if events:
            self._publish()

    def _announce(self, event: HealthEvent) -> None:
        match event:
            case ProviderDegraded(at=at, reason=reason):
                self._events.publish(ProviderHealthChanged(self.provider_id, True, reason, at))
                log.warning("provider_health", provider=self.provider_id, degraded=True, reason=reason)
            case ProviderRecovered(at=at):
                self._events.publish(ProviderHealthChanged(self.provider_id, False, "", at))
                log.info("provider_health", provider=self.provider_id, degraded=False, reason="")
            case _:
                assert_never(event)
