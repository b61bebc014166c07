"""The request path: `route` and `stream` share one attempt loop.

Everything runs in the caller's task, so the caller's deadline and cancellation bound the whole request:
acquire (decide, hold the budget, reserve the key: acquire.py) -> call upstream on a leased client
(non-streaming: the answer; streaming: open the stream and read its first chunk) -> on a retryable
`UpstreamError`, settle the failure with the key and fail over to the next, within `max_attempts` and
the deadline -> settle the outcome with the key and the budget. Whatever raises after a reservation, the
reservation is released and the budget hold freed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import attrs
import structlog
import trio

from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.adapters.base import AdapterResult, AdapterStream
from apikeyrouter.adapters.tokens import load_for
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.policy import Policy
from apikeyrouter.domain.request import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse, Usage
from apikeyrouter.domain.scoring import Weights
from apikeyrouter.errors import (
    ActorStopped,
    InvalidRequest,
    MalformedResponse,
    StreamInterrupted,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.messages.key import Outcome
from apikeyrouter.observe import RequestAttempted
from apikeyrouter.observe.events import attempt_fields
from apikeyrouter.runtime import upstream
from apikeyrouter.runtime.acquire import Held, Request, acquire
from apikeyrouter.runtime.deps import Deps, parse_objective

__all__ = ["Pipeline", "RoutedStreamHandle"]

log = structlog.get_logger("apikeyrouter.request")

T = TypeVar("T")
Objective = str | Weights | Mapping[str, float] | None

_ZERO = Decimal(0)
_MAX_LEASE_S = 600.0  # a reservation whose caller vanished is reclaimed after this (streams: x6)


class RoutedStreamHandle:
    """An open routed stream: `metadata` (key, attempts, decision) is known before the first chunk;
    `final_metadata` adds the settled cost once the stream has ended. `finished`: its last chunk was
    read (a caller that leaves before then has left mid-stream, even without an exception)."""

    def __init__(self, metadata: ResponseMetadata, first: StreamChunk, rest: AsyncIterator[StreamChunk]) -> None:
        self.metadata = metadata
        self.final_metadata: ResponseMetadata | None = None
        self.finished = False
        self._first: StreamChunk | None = first
        self._rest = rest

    def __aiter__(self) -> RoutedStreamHandle:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            return await self._rest.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise


class _Opened:
    """An upstream stream whose first chunk is in; leaving it closes the stream and ends the lease."""

    def __init__(
        self, stack: AsyncExitStack, stream: AdapterStream, first: StreamChunk, rest: AsyncIterator[StreamChunk]
    ) -> None:
        self._stack = stack
        self.stream = stream
        self.first = first
        self.rest = rest

    async def __aenter__(self) -> _Opened:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return bool(await self._stack.__aexit__(exc_type, exc, tb))


class Pipeline:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    def _begin(
        self,
        operation: str,
        intent: Any,
        objective: Objective,
        client: str | None,
        lease_s: float,
        own: tuple[Policy, ...] = (),
    ) -> Request:
        """Check the router runs, validate the request and objective, and name the request and its
        (client, team). A configured client's models bound what it may ask for; the policies that apply
        are resolved once, here (a model alias, an objective, the filters the router reads), `own`: the
        request's own policies (scope request, validated by the caller) among them. Objective:
        the request's own, else the policies', else the client's, else the router's."""
        deps = self._deps
        deps.check(operation)
        req = intent if isinstance(intent, RequestIntent) else RequestIntent.from_openai(intent)
        ident = None if client is None else deps.client_config(client)
        if ident is not None and ident.models and req.model not in ident.models:
            raise InvalidRequest(f"client {client} may not use model {req.model!r}", param="model")
        team = None if ident is None else ident.team
        now = trio.current_time()
        policy = deps.policy_for(req.model, client, team, req.tags, now, own)
        if policy is not None:
            if policy.model_denied_by is not None:
                raise InvalidRequest(
                    f"policy {policy.model_denied_by} does not allow model {policy.model!r} here", param="model"
                )
            if policy.model != req.model:
                req = attrs.evolve(req, model=policy.model)
            if objective is None and policy.objective is not None:
                objective = policy.objective
        if objective is None and ident is not None and ident.objective is not None:
            objective = ident.objective
        goal = deps.routing.objective if objective is None else parse_objective(objective)
        return Request(f"req-{deps.next_id()}", req, goal, client, lease_s, now, team=team, policy=policy)

    async def _attempts(self, req: Request, call: Callable[[Request, Held], Awaitable[T]]) -> tuple[Held, T]:
        """Acquire a key and call upstream; on a retryable failure, the next key. Returns the attempt that
        got through, still held: the caller settles it (or leaving `async with held` releases it)."""
        while True:
            held = await acquire(self._deps, req)
            req.attempts += 1
            held.started = trio.current_time()
            try:
                return held, await call(req, held)
            except UpstreamError as exc:
                await self._failed(req, held, exc)
                if not self._retryable(exc, req.attempts):
                    raise
            except BaseException:
                await held.release("cancelled")
                raise

    async def route(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: Objective = None,
        client: str | None = None,
        policies: tuple[Policy, ...] = (),
    ) -> SystemResponse:
        req = self._begin("route", intent, objective, client, _MAX_LEASE_S, policies)
        await load_for(req.intent)  # the first request of a model family loads its tokenizer, off the loop
        held, result = await self._attempts(req, self._complete)
        async with held:
            response = result.response
            latency = trio.current_time() - held.started
            cost = self._cost(req, held, response.usage)
            outcome = Outcome(None, usage=response.usage, cost=cost, latency_s=latency, signal=result.signal)
            await held.settle(outcome, cost)
        self._learn(req, held, response.usage)
        self._record(req, held, None, latency)
        return attrs.evolve(response, metadata=self._metadata(req, held, cost))

    @asynccontextmanager
    async def stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: Objective = None,
        client: str | None = None,
        policies: tuple[Policy, ...] = (),
    ) -> AsyncIterator[RoutedStreamHandle]:
        req = self._begin("stream", intent, objective, client, _MAX_LEASE_S * 6, policies)
        await load_for(req.intent)
        held, opened = await self._attempts(req, self._open_first)
        async with held, opened:
            handle = RoutedStreamHandle(self._metadata(req, held, _ZERO), opened.first, opened.rest)
            try:
                yield handle
            except UpstreamError as exc:
                await self._end_stream(req, held, opened, handle, exc)
                raise
            except BaseException:
                # The caller left mid-stream: the provider saw the request, so settle what was used.
                await self._end_stream(req, held, opened, handle, None, left=True)
                raise
            # Left the block without reading to the end (a `break`): mid-stream too, settled the same way.
            await self._end_stream(req, held, opened, handle, None, left=not handle.finished)

    # -- calls ----------------------------------------------------------------------------------------

    def _provider(self, held: Held, *, streaming: bool = False) -> ProviderActor:
        try:
            return self._deps.provider(held.provider)
        except (ActorStopped, UnknownProvider) as exc:
            raise upstream.provider_gone(held.provider, held.key_id, exc, streaming=streaming) from exc

    async def _complete(self, req: Request, held: Held) -> AdapterResult:
        return await upstream.complete(self._provider(held), held.adapter, req.intent, held.grant.secret, held.key_id)

    async def _open_first(self, req: Request, held: Held) -> _Opened:
        """Open the stream and read its first chunk: until then a failure still fails over."""
        provider = self._provider(held, streaming=True)
        stack = AsyncExitStack()
        try:
            stream = await stack.enter_async_context(
                upstream.open_stream(provider, held.adapter, req.intent, held.grant.secret, held.key_id)
            )
            chunks = stream.__aiter__()
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                raise StreamInterrupted(
                    "stream ended before any chunk",
                    failure=FailureClass.SERVER_ERROR,
                    provider=held.provider,
                    key_id=held.key_id,
                ) from None
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)  # the stream learns why it closes
            raise
        return _Opened(stack, stream, first, chunks)

    # -- settling -------------------------------------------------------------------------------------

    def _cost(self, req: Request, held: Held, usage: Usage) -> Decimal:
        """The call's actual cost. Usage the price rules reject (negative counts, garbage) is a
        malformed response: a typed error for the caller, and the attempt's holdings are released."""
        try:
            return held.adapter.cost(req.intent.model, usage)
        except Exception as exc:
            raise MalformedResponse(
                f"{held.provider}: usage not understood ({type(exc).__name__}: {exc})",
                failure=FailureClass.SERVER_ERROR,
                provider=held.provider,
                key_id=held.key_id,
            ) from exc

    async def _failed(self, req: Request, held: Held, exc: UpstreamError) -> None:
        """An attempt failed upstream: free its budget hold, settle the failure with the key (its breaker,
        lifecycle and windows learn from it), record it, and keep the key out of this request's next tries."""
        latency = trio.current_time() - held.started
        await held.settle(self._outcome_of(exc, held, latency), None)
        self._record(req, held, exc.failure, latency)
        req.tried.add(held.key_id)
        req.last_error = exc

    async def _end_stream(
        self,
        req: Request,
        held: Held,
        opened: _Opened,
        handle: RoutedStreamHandle,
        failure: UpstreamError | None,
        *,
        left: bool = False,
    ) -> None:
        usage = self._stream_usage(req, held, opened.stream, complete=failure is None and not left)
        latency = trio.current_time() - held.started
        try:
            cost = self._cost(req, held, usage)
        except MalformedResponse:
            if left:
                return  # leaving `async with held` releases it; the caller's cancellation goes on
            raise
        if failure is None:
            outcome = Outcome(None, usage=usage, cost=cost, latency_s=latency, signal=opened.stream.signal)
        else:
            outcome = attrs.evolve(self._outcome_of(failure, held, latency), usage=usage, cost=cost)
        await held.settle(outcome, cost)
        if not left:
            self._record(req, held, None if failure is None else failure.failure, latency)
        handle.final_metadata = attrs.evolve(handle.metadata, cost=cost, latency_s=trio.current_time() - req.start)

    def _stream_usage(self, req: Request, held: Held, stream: AdapterStream, *, complete: bool) -> Usage:
        """What a stream is billed. Ended normally: the usage the provider reported; when it never
        reported any (`usage.estimated`: our own count), the worst case the budget held, as the adapters
        bill an impossible report. Cut or left mid-stream: what was used, as far as it was seen (at
        least the input, by our count)."""
        usage = stream.usage
        if usage is not None and not usage.estimated:
            return usage
        est = req.estimate(held.provider, held.adapter)
        if complete:
            output = max(est.max_output_tokens, usage.output_tokens if usage is not None else 0)
            return Usage(est.input_tokens, output, estimated=True)
        return usage if usage is not None else Usage(est.input_tokens, 0, estimated=True)

    def _learn(self, req: Request, held: Held, usage: Usage) -> None:
        """Reconcile: how this answer's reported usage compares with what its estimate held."""
        if not usage.estimated:
            est = req.estimate(held.provider, held.adapter)
            self._deps.reconcile(held.provider, req.intent.model, est.input_tokens, est.max_output_tokens, usage)

    def _outcome_of(self, exc: UpstreamError, held: Held, latency: float) -> Outcome:
        provider = self._deps.board.providers.get(held.provider)
        return Outcome(
            failure=exc.failure,
            latency_s=latency,
            signal=exc.signal,
            retry_after=exc.retry_after,
            message=exc.message[:200],
            provider_degraded=provider is not None and provider.degraded,
        )

    def _retryable(self, exc: UpstreamError, attempts: int) -> bool:
        action = self._deps.config.failures[exc.failure]
        return action.retry_other_key and attempts < self._deps.routing.max_attempts

    def _metadata(self, req: Request, held: Held, cost: Decimal) -> ResponseMetadata:
        return ResponseMetadata(
            key_used=held.key_id,
            provider=held.provider,
            cost=cost,
            attempts=req.attempts,
            latency_s=trio.current_time() - req.start,
            decision_id=held.decision.id,
            decision=held.decision,
            request_id=req.id,
            client=req.client,
        )

    def _record(self, req: Request, held: Held, failure: FailureClass | None, latency: float) -> None:
        """Publish the attempt's `RequestAttempted` and log it: a failure at info, a success at debug,
        its fields taken from the event, and built only when the line is logged."""
        event = RequestAttempted(
            req.id,
            held.key_id,
            held.provider,
            req.attempts,
            held.decision.id,
            failure,
            latency,
            trio.current_time(),
            client=req.client,
            team=req.team,
        )
        self._deps.events.publish(event)
        if failure is not None:
            log.info("attempt_failed", **attempt_fields(event))
        elif _logs_debug():
            # The decision's full explanation is one GET /decisions/{id} (or `inspect decisions`) away;
            # rendering it for every request would cost more than the decision itself.
            log.debug("attempt_succeeded", chosen_by=held.decision.objective, **attempt_fields(event))


def _logs_debug() -> bool:
    """Whether the request logger writes debug lines (a logger that cannot say is taken to write them)."""
    enabled = getattr(log, "is_enabled_for", None)
    return True if enabled is None else bool(enabled(logging.DEBUG))
