"""A request, end to end: decide, hold the budget, reserve the key, call upstream, settle.

`Dispatch` is the request half of `ApiKeyRouter` (a mixin; the other half, in runtime.py, owns the tree
and the registrations). Everything here runs in the caller's task, so the caller's deadline and
cancellation bound the whole request: ask the router actor for a decision, hold the worst-case cost on
the budgets, ask the best key to reserve (it may refuse: take the next), run the upstream call through
the provider actor, then settle the outcome with the key and the budget. Every path (success, failure,
cancellation) settles or releases what it holds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from decimal import Decimal
from typing import Any

import attrs
import structlog
import trio

from apikeyrouter.actors.base import ActorRef
from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.budget import BudgetActor
from apikeyrouter.actors.key import KeyActor
from apikeyrouter.actors.provider import ForwardedStream, ProviderActor
from apikeyrouter.actors.router import RoutingDecision
from apikeyrouter.adapters.base import AdapterResult, CostEstimate, ProviderAdapter
from apikeyrouter.config import RouterConfig
from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.scoring import Weights, render_time
from apikeyrouter.errors import (
    ActorError,
    ActorStopped,
    BudgetExceeded,
    MailboxFull,
    NoKeyAvailable,
    RouterNotRunning,
    StreamInterrupted,
    UnknownKey,
    UnknownModel,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.intent import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse, Usage
from apikeyrouter.messages.budget import BudgetCommand, Charge, Free, Hold
from apikeyrouter.messages.key import Granted, KeyCommand, Outcome, Refused, Release, Reserve, Settle
from apikeyrouter.messages.router import Decide
from apikeyrouter.observe import EventBus, RequestAttempted
from apikeyrouter.supervisors import Supervisor

__all__ = ["Dispatch", "RoutedStreamHandle"]

log = structlog.get_logger("apikeyrouter.dispatch")

_ZERO = Decimal(0)
_MAX_CHANGE_WAITS = 200  # bounded: a request never spins on keys that keep refusing
_MAX_LEASE_S = 600.0  # a reservation whose caller vanished is reclaimed after this (streams: x6)


@attrs.frozen
class _Attempt:
    key_id: str
    provider: str
    grant: Granted
    decision: RoutingDecision
    hold_id: str


class RoutedStreamHandle:
    """An open routed stream: `metadata` (key, attempts, decision) is known before the first chunk;
    `final_metadata` adds the settled cost once the stream has ended."""

    def __init__(self, metadata: ResponseMetadata, first: StreamChunk, rest: AsyncIterator[StreamChunk]) -> None:
        self.metadata = metadata
        self.final_metadata: ResponseMetadata | None = None
        self._first: StreamChunk | None = first
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:
            try:
                chunk = await self._rest.__anext__()
            except StopAsyncIteration:
                return
            yield chunk


class Dispatch:
    """The request half of `ApiKeyRouter`; runtime.py provides the attributes and lookups declared here."""

    config: RouterConfig
    objective: str | Weights
    max_attempts: int
    wait_for_reset: bool
    max_wait: float
    events: EventBus
    board: SnapshotBoard
    _adapters: dict[str, ProviderAdapter]
    _ids: itertools.count[int]
    _wall_offset: float
    _budget_specs: list[BudgetSpec]
    _nursery: trio.Nursery | None

    def _check(self, operation: str) -> Supervisor:
        raise NotImplementedError

    def _key(self, key_id: str) -> KeyActor:
        raise NotImplementedError

    def _provider(self, provider_id: str) -> ProviderActor:
        raise NotImplementedError

    def _router_ref(self) -> ActorRef[Any]:
        raise NotImplementedError

    @staticmethod
    def _objective(objective: str | Weights | Mapping[str, float] | Any) -> str | Weights:
        raise NotImplementedError

    def _budget_ref(self) -> ActorRef[BudgetCommand]:
        actor = self._check("route").child("budgets")
        if not isinstance(actor, BudgetActor):
            raise ActorStopped("budgets", "is restarting")
        return actor.ref

    async def _hold(self, hold_id: str, provider: str, key_id: str, amount: Decimal) -> str | None:
        """Hold the worst case on every budget that applies; None when held, else why not."""
        if not self._budget_specs:
            return None
        ids = ("global", f"provider:{provider}", f"key:{key_id}")
        refused: str | None = "budget actor did not answer"
        # Shielded (bounded) like a reservation: a cancelled caller must still learn it holds money.
        with trio.move_on_after(5) as cs:
            cs.shield = True
            try:
                refused = await self._budget_ref().ask(lambda r: Hold(hold_id, ids, amount, r))
            except (ActorError, RouterNotRunning) as exc:
                # Fail closed: a hard budget is never overspent because its keeper was restarting.
                return f"budgets unavailable ({exc})"
        if cs.cancelled_caught:
            self._unhold(hold_id, None)  # in case the hold landed after we stopped waiting
        return refused

    def _unhold(self, hold_id: str, actual: Decimal | None) -> None:
        """Charge the actual cost (or free the hold). Never waits: a full mailbox falls back to a task."""
        if not self._budget_specs:
            return
        msg: BudgetCommand = Free(hold_id) if actual is None else Charge(hold_id, actual)
        try:
            self._budget_ref().tell_nowait(msg)
        except MailboxFull:
            assert self._nursery is not None
            self._nursery.start_soon(self._budget_ref().tell, msg)
        except (ActorStopped, RouterNotRunning):
            pass

    def _begin(
        self, operation: str, intent: RequestIntent | Mapping[str, Any], objective: Any
    ) -> tuple[RequestIntent, str | Weights, str]:
        """Check the router runs, validate the request and objective, and name the request."""
        self._check(operation)
        req = intent if isinstance(intent, RequestIntent) else RequestIntent.from_openai(intent)
        goal = self.objective if objective is None else self._objective(objective)
        return req, goal, f"req-{next(self._ids)}"

    async def _decide(
        self, request_id: str, model: str, objective: str | Weights, exclude: set[str]
    ) -> RoutingDecision:
        ref = self._router_ref()
        decision: RoutingDecision = await ref.ask(lambda r: Decide(request_id, model, objective, frozenset(exclude), r))
        return decision

    async def _acquire(
        self,
        request_id: str,
        intent: RequestIntent,
        objective: str | Weights,
        tried: set[str],
        attempts: int,
        last_error: UpstreamError | None,
        lease_s: float,
    ) -> _Attempt:
        """Decide and reserve: returns the granted attempt, waits for a recovery, or raises."""
        refused: dict[str, float | None] = {}  # key -> when it said the request might fit (None: not by itself)
        refusals: list[str] = []
        budget_refusals: list[str] = []
        busy_keys: set[str] = set()  # refused only because they were at their in-flight limit
        estimates: dict[str, CostEstimate] = {}
        waits_for_change = 0
        while True:
            decision = await self._decide(request_id, intent.model, objective, tried | set(refused))
            for cand in decision.candidates:
                adapter = self._adapters.get(cand.provider)
                if adapter is None:  # its provider was removed (a reload) since the snapshot
                    refused[cand.key_id] = None
                    continue
                est = estimates.get(cand.provider)
                if est is None:  # tokenizing is the costly part: once per provider, not per candidate
                    est = estimates[cand.provider] = adapter.estimate(intent)
                hold_id = f"{request_id}:{next(self._ids)}"
                over_budget = await self._hold(hold_id, cand.provider, cand.key_id, est.worst_case_cost)
                if over_budget is not None:
                    refused[cand.key_id] = None
                    budget_refusals.append(over_budget)
                    refusals.append(f"{cand.key_id}: {over_budget}")
                    continue
                now = trio.current_time()
                lease_until = min(trio.current_effective_deadline(), now + lease_s) + 5.0
                tokens = est.input_tokens + est.max_output_tokens
                reply = await self._reserve(
                    cand.key_id,
                    lambda r, tokens=tokens, cost=est.worst_case_cost, lease=lease_until: Reserve(
                        request_id, intent.model, tokens, cost, lease, r
                    ),
                )
                if isinstance(reply, Refused):
                    self._unhold(hold_id, None)
                    refused[cand.key_id] = reply.retry_at
                    if reply.busy:
                        busy_keys.add(cand.key_id)
                    refusals.append(f"{cand.key_id}: {reply.reason}")
                    log.debug("reserve_refused", request_id=request_id, key=cand.key_id, reason=reply.reason)
                    continue
                if refusals:
                    # The decision ranked on snapshots; say which keys refused when asked to reserve.
                    note = "refused at reservation: " + "; ".join(refusals)
                    decision = attrs.evolve(decision, notes=(*decision.notes, note))
                return _Attempt(cand.key_id, cand.provider, reply, decision, hold_id)
            if decision.candidates:
                continue  # every candidate refused (their state moved on): decide again without them
            if decision.serving == 0:
                raise UnknownModel(intent.model)
            if budget_refusals and last_error is None:
                raise BudgetExceeded("; ".join(dict.fromkeys(budget_refusals)), budget=budget_refusals[0].split(":")[0])
            if last_error is not None and attempts >= self.max_attempts:
                raise last_error
            now = trio.current_time()
            deadline = trio.current_effective_deadline()
            # Without a deadline, never wait longer than max_wait for a key to come back.
            horizon = deadline if deadline != math.inf else now + self.max_wait
            times = [t for t in (decision.retry_at, *refused.values()) if t is not None and t > now]
            retry_at = min(times) if times else None
            may_wait = self.wait_for_reset and attempts < self.max_attempts
            if may_wait and retry_at is not None and retry_at <= horizon:
                log.info("waiting_for_key", request_id=request_id, until=render_time(retry_at, self._wall_offset))
                await trio.sleep_until(retry_at)
                tried.clear()
                refused.clear()
                continue
            busy = busy_keys or dict(decision.excluded_by_kind).get("in_flight", 0) > 0
            if may_wait and busy and horizon > now and waits_for_change < _MAX_CHANGE_WAITS:
                # Keys at their in-flight limit free up without a known time: wait for the next published
                # change, within the deadline (bounded, so keys that keep refusing cannot make this spin).
                waits_for_change += 1
                with trio.move_on_at(min(horizon, now + 1.0)):
                    await self.board.wait_changed()
                for key_id in busy_keys:
                    refused.pop(key_id, None)
                busy_keys.clear()
                continue
            if last_error is not None:
                raise last_error
            when = (
                "" if retry_at is None else f"; the earliest key recovers at {render_time(retry_at, self._wall_offset)}"
            )
            reasons = dict(decision.excluded)
            for text in refusals:
                key_id, _, why = text.partition(": ")
                reasons[key_id] = f"{key_id}: {why}"
            raise NoKeyAvailable(
                f"no key can serve {intent.model} before the deadline{when}",
                retry_at=retry_at,
                retry_after=None if retry_at is None else max(0.0, retry_at - now),
                reasons=reasons,
            )

    async def _reserve(self, key_id: str, make: Any) -> Granted | Refused:
        """Ask a key to reserve. Shielded (bounded): once asked, the answer is always received, so a
        caller cancelled meanwhile still learns of its grant and releases it, instead of leaking it."""
        try:
            ref: ActorRef[KeyCommand] = self._key(key_id).ref
        except (ActorStopped, UnknownKey, UnknownProvider) as exc:
            return Refused(key_id, f"unavailable ({exc})")
        reply: Granted | Refused | None = None
        with trio.move_on_after(5) as cs:
            cs.shield = True
            try:
                reply = await ref.ask(make)
            except ActorError as exc:
                return Refused(key_id, f"unavailable ({exc})")
        if reply is None:  # the key did not answer in time; a late grant expires with its lease
            return Refused(key_id, "did not answer within 5 s")
        return reply

    async def _settle(self, key_id: str, rid: int, outcome: Outcome) -> None:
        # Wait until the key has taken the outcome in, so the caller's next request is decided on the key
        # as it is after this call (a snapshot still showing this call in flight would exclude a key at
        # its in-flight limit). Shielded and bounded: the accounting lands even for a cancelled caller.
        try:
            ref: ActorRef[KeyCommand] = self._key(key_id).ref
            with trio.move_on_after(5) as cs:
                cs.shield = True
                await ref.ask(lambda r: Settle(rid, outcome, r))
        except (ActorError, UnknownKey, UnknownProvider, RouterNotRunning):
            pass  # the key is gone (or restarting): its reservation went with it

    async def _release(self, key_id: str, rid: int, reason: str) -> None:
        await self._tell_key(key_id, Release(rid, reason))

    async def _tell_key(self, key_id: str, msg: KeyCommand) -> None:
        """Hand a settlement to its key. Callers shield it on cancellation paths; a full mailbox gets
        a bounded wait, and a key that is gone (or restarting) took its reservation with it."""
        try:
            ref = self._key(key_id).ref
            try:
                ref.tell_nowait(msg)
            except MailboxFull:
                with trio.move_on_after(5) as cs:
                    cs.shield = True
                    await ref.tell(msg)
        except (ActorStopped, UnknownKey, UnknownProvider, RouterNotRunning):
            pass

    async def _complete(self, attempt: _Attempt, req: RequestIntent) -> AdapterResult:
        try:
            provider = self._provider(attempt.provider)
            return await provider.complete(req, attempt.grant.secret, attempt.key_id)
        except (ActorStopped, UnknownProvider) as exc:
            raise self._provider_gone(attempt, exc) from exc

    @asynccontextmanager
    async def _open_stream(self, attempt: _Attempt, req: RequestIntent) -> AsyncIterator[ForwardedStream]:
        try:
            provider = self._provider(attempt.provider)
            async with provider.stream(req, attempt.grant.secret, attempt.key_id) as upstream:
                yield upstream
        except (ActorStopped, UnknownProvider) as exc:
            raise self._provider_gone(attempt, exc) from exc

    @staticmethod
    def _provider_gone(attempt: _Attempt, exc: Exception) -> UpstreamError:
        """A provider actor restarting (or removed by a reload) mid-call: a connection failure, so the
        request fails over like any other instead of surfacing a kernel error."""
        return UpstreamError(
            f"provider {attempt.provider} unavailable: {exc}",
            failure=FailureClass.CONNECTION,
            provider=attempt.provider,
            key_id=attempt.key_id,
        )

    def _outcome_of(self, exc: UpstreamError, provider: str, latency: float) -> Outcome:
        degraded = False
        with suppress(ActorStopped, UnknownProvider):
            degraded = self._provider(provider).degraded
        return Outcome(
            failure=exc.failure,
            latency_s=latency,
            signal=exc.signal,
            retry_after=exc.retry_after,
            message=exc.message[:200],
            provider_degraded=degraded,
        )

    def _metadata(
        self, attempt: _Attempt, request_id: str, attempts: int, cost: Decimal, latency: float
    ) -> ResponseMetadata:
        return ResponseMetadata(
            key_used=attempt.key_id,
            provider=attempt.provider,
            cost=cost,
            attempts=attempts,
            latency_s=latency,
            decision_id=attempt.decision.id,
            decision=attempt.decision,
            request_id=request_id,
        )

    def _retryable(self, exc: UpstreamError, attempts: int) -> bool:
        action = self.config.failures[exc.failure]
        return action.retry_other_key and attempts < self.max_attempts

    async def route(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> SystemResponse:
        """Send one chat request through the best key now, failing over as needed.

        The deadline is the caller's: wrap the call in `trio.fail_after(...)`. Raises `NoKeyAvailable`,
        `UnknownModel`, `InvalidRequest`, or the last `UpstreamError`.
        """
        req, goal, request_id = self._begin("route", intent, objective)
        start = trio.current_time()
        tried: set[str] = set()
        attempts = 0
        last_error: UpstreamError | None = None
        while True:
            attempt = await self._acquire(request_id, req, goal, tried, attempts, last_error, _MAX_LEASE_S)
            attempts += 1
            provider = self._adapters[attempt.provider]
            call_start = trio.current_time()
            try:
                result = await self._complete(attempt, req)
            except UpstreamError as exc:
                await self._attempt_failed(request_id, attempt, attempts, exc, call_start, tried)
                last_error = exc
                if not self._retryable(exc, attempts):
                    raise
                continue
            except BaseException:
                self._unhold(attempt.hold_id, None)
                with trio.CancelScope(shield=True):
                    await self._release(attempt.key_id, attempt.grant.reservation_id, "cancelled")
                raise
            latency = trio.current_time() - call_start
            response = result.response
            cost = provider.cost(req.model, response.usage)
            self._unhold(attempt.hold_id, cost)
            await self._settle(
                attempt.key_id,
                attempt.grant.reservation_id,
                Outcome(None, usage=response.usage, cost=cost, latency_s=latency, signal=result.signal),
            )
            self._record_attempt(request_id, attempt, attempts, None, latency)
            meta = self._metadata(attempt, request_id, attempts, cost, trio.current_time() - start)
            return attrs.evolve(response, metadata=meta)

    async def _attempt_failed(
        self, request_id: str, attempt: _Attempt, n: int, exc: UpstreamError, call_start: float, tried: set[str]
    ) -> None:
        """An attempt failed upstream: free its budget hold, settle the failure with the key (its breaker,
        lifecycle and windows learn from it), record it, and keep the key out of this request's next tries."""
        latency = trio.current_time() - call_start
        self._unhold(attempt.hold_id, None)
        await self._settle(
            attempt.key_id, attempt.grant.reservation_id, self._outcome_of(exc, attempt.provider, latency)
        )
        self._record_attempt(request_id, attempt, n, exc.failure, latency)
        tried.add(attempt.key_id)

    def _record_attempt(
        self, request_id: str, attempt: _Attempt, n: int, failure: FailureClass | None, latency: float
    ) -> None:
        data = {
            "request_id": request_id,
            "key": attempt.key_id,
            "provider": attempt.provider,
            "attempt": n,
            "decision_id": attempt.decision.id,
            "outcome": "success" if failure is None else failure.value,
            "latency_ms": round(latency * 1000, 3),
        }
        event = RequestAttempted(
            request_id, attempt.key_id, attempt.provider, n, attempt.decision.id, failure, latency, trio.current_time()
        )
        self.events.publish(event)
        if failure is not None:
            log.info("attempt_failed", **data)
        else:
            # The decision's full explanation is one GET /decisions/{id} (or `inspect decisions`) away;
            # rendering it for every request would cost more than the decision itself.
            log.debug("attempt_succeeded", chosen_by=attempt.decision.objective, **data)

    @asynccontextmanager
    async def stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> AsyncIterator[RoutedStreamHandle]:
        """Open a routed stream. Failover happens only before the first chunk is handed over; after it,
        an upstream failure raises `StreamInterrupted` from the iteration, and the usage seen is settled."""
        req, goal, request_id = self._begin("stream", intent, objective)
        start = trio.current_time()
        tried: set[str] = set()
        attempts = 0
        last_error: UpstreamError | None = None
        while True:
            attempt = await self._acquire(request_id, req, goal, tried, attempts, last_error, _MAX_LEASE_S * 6)
            attempts += 1
            adapter = self._adapters[attempt.provider]
            call_start = trio.current_time()
            settled = False
            async with AsyncExitStack() as stack:
                try:
                    upstream = await stack.enter_async_context(self._open_stream(attempt, req))
                    chunks = upstream.__aiter__()
                    first = await chunks.__anext__()
                except (UpstreamError, StopAsyncIteration) as err:
                    exc = (
                        err
                        if isinstance(err, UpstreamError)
                        else StreamInterrupted(
                            "stream ended before any chunk",
                            failure=FailureClass.SERVER_ERROR,
                            provider=attempt.provider,
                        )
                    )
                    await self._attempt_failed(request_id, attempt, attempts, exc, call_start, tried)
                    last_error = exc
                    if not self._retryable(exc, attempts):
                        raise exc from None
                    continue
                except BaseException:
                    self._unhold(attempt.hold_id, None)
                    with trio.CancelScope(shield=True):
                        await self._release(attempt.key_id, attempt.grant.reservation_id, "cancelled")
                    raise
                meta = self._metadata(attempt, request_id, attempts, _ZERO, trio.current_time() - start)
                handle = RoutedStreamHandle(meta, first, chunks)
                failure: UpstreamError | None = None
                try:
                    yield handle
                except UpstreamError as exc:
                    failure = exc
                    raise
                except BaseException:
                    # The caller left mid-stream: the provider saw the request, so settle what was used.
                    usage = upstream.usage or Usage()
                    self._unhold(attempt.hold_id, adapter.cost(req.model, usage))
                    with trio.CancelScope(shield=True):
                        await self._settle(
                            attempt.key_id,
                            attempt.grant.reservation_id,
                            Outcome(
                                None,
                                usage=usage,
                                cost=adapter.cost(req.model, usage),
                                latency_s=trio.current_time() - call_start,
                            ),
                        )
                    settled = True
                    raise
                finally:
                    if not settled:
                        usage = upstream.usage or Usage()
                        cost = adapter.cost(req.model, usage)
                        self._unhold(attempt.hold_id, cost)
                        latency = trio.current_time() - call_start
                        outcome = (
                            Outcome(None, usage=usage, cost=cost, latency_s=latency, signal=upstream.signal)
                            if failure is None
                            else attrs.evolve(
                                self._outcome_of(failure, attempt.provider, latency), usage=usage, cost=cost
                            )
                        )
                        with trio.CancelScope(shield=True):
                            await self._settle(attempt.key_id, attempt.grant.reservation_id, outcome)
                        self._record_attempt(
                            request_id, attempt, attempts, None if failure is None else failure.failure, latency
                        )
                        handle.final_metadata = attrs.evolve(meta, cost=cost, latency_s=trio.current_time() - start)
                return

    async def route_stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Weights | Mapping[str, float] | None = None,
        client: str | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """`async for chunk in router.route_stream(...)`: the simple form of `stream()`."""
        async with self.stream(intent, objective=objective, client=client) as handle:
            async for chunk in handle:
                yield chunk

    # -- state ----------------------------------------------------------------------------------------
