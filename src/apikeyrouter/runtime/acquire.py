"""The acquire step of a request: decide, hold the budget, reserve the key; or wait for one; or say why not.

`acquire` asks the router actor for a decision and walks its candidates: hold the worst-case cost on every
budget that applies, then ask the key to reserve. A key (or a budget) may refuse: its typed `Refusal` is
collected on the request and the next candidate is tried; when every candidate refused, the router
decides again without them. With no candidate left, the request waits for the earliest recovery (or for
a busy key to free a slot) within its deadline, or raises `UnknownModel`, `BudgetExceeded`,
`NoKeyAvailable` or its last upstream error. A router (or budget) actor that is restarting is asked again
after short waits, a few times (asks.py): a router that does not come back is `NoKeyAvailable` naming
"router" — nothing was sent or spent, the caller may retry, as for any key that could not serve in
time; `RouterNotRunning` stays for a router facade that is not running at all. A key that is restarting
refuses as UNAVAILABLE and the next candidate is tried. Every hold and every reservation has a lease
(the caller's deadline, or the request's longest lease, plus a grace), so one whose settlement is lost
is freed in the end; a grant that comes after the request stopped waiting is released at once.

What a grant holds is a `Held`: exactly one of `settle` or `release` gives it back, and leaving
`async with held:` without either releases it, whatever raised.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from types import TracebackType

import attrs
import structlog
import trio

from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.decision import Candidate, RoutingDecision
from apikeyrouter.domain.policy import EffectivePolicy
from apikeyrouter.domain.refusal import Refusal, RefusalKind, describe, explain
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.domain.scoring import Weights
from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.errors import (
    ActorError,
    ActorStopped,
    BudgetExceeded,
    ClientRateLimited,
    InvalidRequest,
    MailboxFull,
    NoKeyAvailable,
    RouterNotRunning,
    UnknownKey,
    UnknownModel,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.kernel.actor import ActorRef, Reply
from apikeyrouter.messages.budget import Charge, Free, Hold, HoldPlaced
from apikeyrouter.messages.key import Granted, KeyCommand, Outcome, Release, Reserve, Settle
from apikeyrouter.messages.router import Decide
from apikeyrouter.runtime.asks import GRACE, ask_bounded, ask_restarting, tell_bounded
from apikeyrouter.runtime.deps import Deps
from apikeyrouter.store.redis_shared import KeyLimits, SharedAsk, SharedGrant, SharedLimits

__all__ = ["Held", "Request", "acquire"]

log = structlog.get_logger("apikeyrouter.request")

_MAX_CHANGE_WAITS = 200  # bounded: a request never spins on keys that keep refusing
_GONE = (ActorError, UnknownKey, UnknownProvider, RouterNotRunning)  # the actor took what it held with it


@attrs.define(eq=False)
class Request:
    """One request across its attempts. `tried`: keys that failed upstream for it; `refused`: keys (or
    their budgets) that refused since this acquire began or last waited, by key."""

    id: str
    intent: RequestIntent
    objective: str | Weights
    client: str | None
    lease_s: float
    start: float
    team: str | None = None
    policy: EffectivePolicy | None = None  # resolved once (pipeline); None: no policy is loaded
    attempts: int = 0
    last_error: UpstreamError | None = None
    tried: set[str] = attrs.Factory(set)
    refused: dict[str, Refusal] = attrs.Factory(dict)
    estimates: dict[str, CostEstimate] = attrs.Factory(dict)
    change_waits: int = 0

    def estimate(self, provider: str, adapter: ProviderAdapter) -> CostEstimate:
        est = self.estimates.get(provider)
        if est is None:  # tokenizing is the costly part: once per provider, not per candidate
            est = self.estimates[provider] = adapter.estimate(self.intent)
        return est


class Held:
    """One granted attempt: the key's reservation and, with budgets, the budget hold.

    It settles with the address that granted it (`ref`), never by looking the key id up again: a key
    removed and registered again (a reload that changes it) is a new address whose reservation ids
    start over, and the old grant must not settle the new actor's lease of the same number."""

    __slots__ = (
        "_deps",
        "_open",
        "adapter",
        "decision",
        "grant",
        "hold_id",
        "key_id",
        "provider",
        "ref",
        "shared",
        "started",
    )

    def __init__(
        self,
        deps: Deps,
        ref: ActorRef[KeyCommand],
        grant: Granted,
        provider: str,
        adapter: ProviderAdapter,
        decision: RoutingDecision,
        hold_id: str | None,
    ) -> None:
        self._deps = deps
        self._open = True
        self.ref = ref
        self.grant = grant
        self.key_id = grant.key_id
        self.provider = provider
        self.adapter = adapter
        self.decision = decision
        self.hold_id = hold_id
        self.shared: SharedGrant | None = None  # what the attempt holds on Redis, with several instances
        self.started = trio.current_time()

    async def __aenter__(self) -> Held:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._open:
            await self.release("cancelled" if isinstance(exc, trio.Cancelled) else "error")

    async def settle(self, outcome: Outcome, charge: Decimal | None) -> None:
        """Charge `charge` (None: free the hold) and hand the outcome to the key. Returns once the outcome
        is in the key's mailbox; for a key with an in-flight limit, once the key has applied it."""
        self._open = False
        usage = outcome.usage
        tokens = 0 if usage is None else usage.total_tokens
        await unhold(self._deps, self.hold_id, charge, None if usage is None else tokens)
        if self.shared is not None and self._deps.shared is not None:
            await self._deps.shared.finish(self.shared, tokens=tokens, charge=charge)
        ref = self.ref
        try:
            if self.grant.confirm_settle:
                rid = self.grant.reservation_id
                await ask_bounded(ref, lambda r: Settle(rid, outcome, r))
            else:
                await tell_bounded(ref, Settle(self.grant.reservation_id, outcome))
        except _GONE:
            pass

    async def release(self, reason: str) -> None:
        """The call produced no outcome: free the hold and give the reservation back."""
        self._open = False
        await unhold(self._deps, self.hold_id, None)
        if self.shared is not None and self._deps.shared is not None:
            await self._deps.shared.finish(self.shared, tokens=None, charge=None)
        rid = self.grant.reservation_id
        ref = self.ref
        with contextlib.suppress(*_GONE):
            if self.grant.confirm_settle:  # as for settle: the next request finds the slot free
                await ask_bounded(ref, lambda r: Release(rid, reason, r))
            else:
                await tell_bounded(ref, Release(rid, reason))


async def unhold(deps: Deps, hold_id: str | None, charge: Decimal | None, tokens: int | None = None) -> None:
    """Charge the actual cost (and tokens) of a hold, or free it (`charge` None). Never raises for a
    gone actor."""
    if hold_id is None:
        return
    with contextlib.suppress(*_GONE):
        await tell_bounded(deps.budget_ref(), Free(hold_id) if charge is None else Charge(hold_id, charge, tokens))


async def acquire(deps: Deps, req: Request) -> Held:
    """Decide and reserve: the granted attempt, after waiting for a recovery if need be; or raises."""
    req.refused.clear()
    req.change_waits = 0
    while True:
        decision = await _decide(deps, req, frozenset(req.tried | req.refused.keys()))
        for cand in decision.candidates:
            got = await _take(deps, req, cand, decision)
            if isinstance(got, Held):
                return got
            if "scope" in got.detail:  # the client's (or team's) own rpm/tpm: no other key helps
                await _client_limited(deps, req, got)
                break
            req.refused[cand.key_id] = got
            log.debug("reserve_refused", request_id=req.id, key=cand.key_id, kind=got.kind.value)
        else:
            if not decision.candidates:  # else every candidate refused: decide again without them
                await _no_candidate(deps, req, decision)


async def _decide(deps: Deps, req: Request, exclude: frozenset[str]) -> RoutingDecision:
    """The router's decision, waiting a little for a router actor that is restarting (bounded)."""
    model, objective = req.intent.model, req.objective

    async def ask() -> RoutingDecision:
        ref = deps.router_ref()
        return await ref.ask(
            lambda r: Decide(
                req.id, model, objective, exclude, r, policy=req.policy, client=req.client, estimates=req.estimates
            )
        )

    try:
        return await ask_restarting(ask)
    except ActorError as exc:
        raise NoKeyAvailable(
            f"no key can serve {model}: the router is not deciding ({exc})", reasons={"router": str(exc)}
        ) from exc


def _lease_until(req: Request) -> float:
    """When a reservation taken now is reclaimed if its settlement never comes: the caller's deadline (or
    the request's longest lease), plus a grace for the settlement to arrive."""
    return min(trio.current_effective_deadline(), trio.current_time() + req.lease_s) + GRACE


async def _take(deps: Deps, req: Request, cand: Candidate, decision: RoutingDecision) -> Held | Refusal:
    """Hold the budget, then reserve the key: the grant, or the first refusal met."""
    adapter = deps.adapter(cand.provider)
    if adapter is None:  # its provider was removed (a reload) since the snapshot
        return _unavailable(cand.key_id, f"provider {cand.provider} removed")
    try:
        ref = deps.key_ref(cand.key_id)
    except (ActorError, UnknownKey, UnknownProvider) as exc:
        return _unavailable(cand.key_id, str(exc))
    est = req.estimate(cand.provider, adapter)
    policy = req.policy
    if policy is not None and policy.max_cost is not None and est.worst_case_cost > policy.max_cost:
        return _capped(cand.key_id, policy, est.worst_case_cost)
    hold_id: str | None = None
    lease_until = _lease_until(req)  # once per attempt: the hold's and the reservation's
    if deps.budgets_enabled:
        hold_id = f"{req.id}:{deps.next_id()}"
        # The charge is sent before the key's settlement: the hold outlives the reservation by a grace.
        tokens = est.input_tokens + est.max_output_tokens
        refusal = await _hold(deps, req, hold_id, cand, est, tokens, lease_until + GRACE)
        if refusal is not None:
            return refusal
    try:
        reply = await _reserve(req, cand.key_id, ref, est, lease_until)
    except BaseException:
        await unhold(deps, hold_id, None)
        raise
    if isinstance(reply, Refusal):
        await unhold(deps, hold_id, None)
        return reply
    if req.refused:
        decision = attrs.evolve(decision, refused=tuple(req.refused.values()))
    held = Held(deps, ref, reply, cand.provider, adapter, decision, hold_id)
    if deps.shared is not None:  # several instances: the shared side must agree too
        async with _unless_kept(held) as keep:
            refusal = await _share(deps, deps.shared, req, held, est)
            if refusal is None:
                keep()
        if refusal is not None:
            return refusal
    return held


@contextlib.asynccontextmanager
async def _unless_kept(held: Held) -> AsyncIterator[Callable[[], None]]:
    """Release `held` on the way out, whatever raised, unless `keep()` was called."""
    kept = False

    def keep() -> None:
        nonlocal kept
        kept = True

    try:
        yield keep
    finally:
        if not kept:
            with trio.CancelScope(shield=True):  # the release is the cleanup of a cancelled attempt too
                await held.release("refused by the shared store")


async def _share(deps: Deps, shared: SharedLimits, req: Request, held: Held, est: CostEstimate) -> Refusal | None:
    """The key's shared windows, in-flight slot, bench, budgets and the client's and team's rpm/tpm windows
    (one Redis round trip): None when held."""
    snap = deps.board.keys.get(held.key_id)
    limits = KeyLimits()
    if snap is not None:
        qc = snap.quota.config
        limits = KeyLimits(qc.rpm, qc.tpm, snap.max_in_flight, qc.rpd, qc.tokens_per_month)
    budgets = shared.budgets_for(_request_budget_ids(req, held.provider, held.key_id)) if deps.budgets_enabled else ()
    lease_s = _lease_until(req) + GRACE - trio.current_time()
    tokens = est.input_tokens + est.max_output_tokens
    scope_ids = [f"{kind}:{who}" for kind, who in (("team", req.team), ("client", req.client)) if who is not None]
    scopes = shared.rates_for(scope_ids)
    ask = SharedAsk(held.key_id, req.id, tokens, limits, lease_s, est.worst_case_cost, budgets, scopes)
    got = await shared.reserve(ask)
    if isinstance(got, Refusal):
        return got
    held.shared = got
    return None


def _budget_ids(provider: str, key_id: str) -> tuple[str, ...]:
    return ("global", f"provider:{provider}", f"key:{key_id}")


def _request_budget_ids(req: Request, provider: str, key_id: str) -> tuple[str, ...]:
    """Every budget an attempt holds on: the key's, then its team's, its client's and its policies'."""
    ids = _budget_ids(provider, key_id)
    if req.team is not None:
        ids = (*ids, f"team:{req.team}")
    if req.client is not None:
        ids = (*ids, f"client:{req.client}")
    if req.policy is not None and req.policy.budgets:
        ids = (*ids, *req.policy.budgets)
    return ids


async def _hold(
    deps: Deps, req: Request, hold_id: str, cand: Candidate, est: CostEstimate, tokens: int, until: float
) -> Refusal | None:
    """Hold the worst case of `est` on every budget that applies (and the request's place in its client's and team's
    rpm/tpm windows) until `until` at the latest: None when held. A budget actor that is restarting is
    asked again (a hold is idempotent by its id). Fails closed: a hard budget is never overspent because
    its keeper was not answering."""
    ids = _request_budget_ids(req, cand.provider, cand.key_id)

    ratio = cand.ratio  # what the router read for the cost score: references, no copy
    price = None if ratio is None else cand.view.price_for(cand.model)

    def make(reply: Reply[HoldPlaced | Refusal]) -> Hold:
        return Hold(
            hold_id, ids, est.worst_case_cost, until, reply, cand.key_id, tokens, req.client,
            ratio, price, est.max_output_tokens,
        )  # fmt: skip

    try:
        answer = await ask_restarting(lambda: ask_bounded(deps.budget_ref(), make))
    except (ActorError, RouterNotRunning) as exc:
        return _unavailable(cand.key_id, f"budgets: {exc}", budget="budgets")
    if answer is None:
        await unhold(deps, hold_id, None)  # in case the hold lands after we stopped waiting
        return _unavailable(cand.key_id, f"budgets did not answer within {GRACE:g} s", budget="budgets")
    return answer if isinstance(answer, Refusal) else None


async def _reserve(
    req: Request, key_id: str, ref: ActorRef[KeyCommand], est: CostEstimate, lease_until: float
) -> Granted | Refusal:
    tokens = est.input_tokens + est.max_output_tokens

    def make(reply: Reply[Granted | Refusal]) -> Reserve:
        return Reserve(req.id, req.intent.model, tokens, est.worst_case_cost, lease_until, reply)

    def give_back(late: Granted | Refusal) -> None:
        """A grant that came after we stopped waiting: its slot and quota go back at once."""
        if isinstance(late, Granted):
            log.info("late_grant_released", request_id=req.id, key=key_id)
            with contextlib.suppress(MailboxFull, ActorStopped):  # else its lease still ends it
                ref.tell_nowait(Release(late.reservation_id, "granted after the request stopped waiting"))

    try:
        reply = await ask_bounded(ref, make, undo=give_back)
    except ActorError as exc:  # restarting: the next candidate
        return _unavailable(key_id, str(exc))
    if reply is None:  # the key did not answer in time; a late grant is given back (give_back)
        return _unavailable(key_id, f"did not answer within {GRACE:g} s")
    return reply


def _capped(key_id: str, policy: EffectivePolicy, worst_case: Decimal) -> Refusal:
    """A cost policy caps what one request may cost: this key's provider would cost more (worst case)."""
    cap = policy.max_cost
    detail = {"requested": worst_case, "available": cap, "limit": cap, "spent": Decimal(0), "reserved": Decimal(0)}
    return Refusal(key_id, RefusalKind.BUDGET, budget=f"policy:{policy.max_cost_by}", detail=detail)


def _unavailable(key_id: str, error: str, *, budget: str | None = None) -> Refusal:
    return Refusal(key_id, RefusalKind.UNAVAILABLE, budget=budget, detail={"error": error})


async def _no_candidate(deps: Deps, req: Request, decision: RoutingDecision) -> None:
    """No key left in this decision: wait for one to recover (the caller then decides again), or raise."""
    routing = deps.routing
    if decision.serving == 0:
        raise UnknownModel(req.intent.model)
    budgets = [r for r in req.refused.values() if r.budget is not None]
    if budgets and req.last_error is None:
        text = "; ".join(dict.fromkeys(explain(r, deps.wall_offset) for r in budgets))
        raise BudgetExceeded(text, budget=budgets[0].budget or "", refusals=tuple(budgets))
    if req.last_error is not None and req.attempts >= routing.max_attempts:
        raise req.last_error
    _refuse_what_never_fits(deps, req, decision)
    now = trio.current_time()
    deadline = trio.current_effective_deadline()
    # Without a deadline, never wait longer than max_wait for a key to come back.
    horizon = deadline if deadline != math.inf else now + routing.max_wait
    times = [t for t in (decision.retry_at, *(r.retry_at for r in req.refused.values())) if t is not None and t > now]
    retry_at = min(times) if times else None
    may_wait = routing.wait_for_reset and req.attempts < routing.max_attempts
    if may_wait and retry_at is not None and retry_at <= horizon:
        log.info("waiting_for_key", request_id=req.id, until=render_wall(retry_at, deps.wall_offset))
        await trio.sleep_until(retry_at)
        req.tried.clear()
        req.refused.clear()
        return
    busy = any(r.busy for r in req.refused.values()) or dict(decision.excluded_by_kind).get("in_flight", 0) > 0
    if may_wait and busy and horizon > now and req.change_waits < _MAX_CHANGE_WAITS:
        # Keys at their in-flight limit free up without a known time: wait for the next published
        # change, within the deadline (bounded, so keys that keep refusing cannot make this spin).
        req.change_waits += 1
        with trio.move_on_at(min(horizon, now + 1.0)):
            await deps.board.wait_changed()
        req.refused = {k: r for k, r in req.refused.items() if not r.busy}
        return
    if req.last_error is not None:
        raise req.last_error
    raise _no_key(deps, req, decision, retry_at, now)


async def _client_limited(deps: Deps, req: Request, refusal: Refusal) -> None:
    """The client's or team's window is full: wait until it slides (within the deadline), or raise."""
    now = trio.current_time()
    deadline = trio.current_effective_deadline()
    horizon = deadline if deadline != math.inf else now + deps.routing.max_wait
    retry_at = refusal.retry_at
    if deps.routing.wait_for_reset and retry_at is not None and retry_at <= horizon:
        await trio.sleep_until(retry_at)
        return
    scope = str(refusal.detail.get("scope"))
    when = "" if retry_at is None else f"; room again at {render_wall(retry_at, deps.wall_offset)}"
    raise ClientRateLimited(
        f"{scope} {refusal.detail.get('reason')}{when}",
        scope=scope,
        retry_at=retry_at,
        retry_after=None if retry_at is None else max(0.0, retry_at - now),
    )


def _refuse_what_never_fits(deps: Deps, req: Request, decision: RoutingDecision) -> None:
    """Every key that serves the model said this request is bigger than one of its windows: no wait helps,
    so it is the caller's to change (a 400 naming max_tokens), not "retry later" (which clients retry)."""
    never = [r for r in req.refused.values() if r.kind is RefusalKind.QUOTA and r.retry_at is None]
    if req.last_error is not None or not never or len(never) < decision.serving:
        return
    why = "; ".join(dict.fromkeys(explain(r, deps.wall_offset) for r in never))
    raise InvalidRequest(
        f"this request needs more tokens than any key serving {req.intent.model} allows in a window ({why}): "
        "lower max_tokens or shorten the messages",
        param="max_tokens",
    )


def _no_key(deps: Deps, req: Request, decision: RoutingDecision, retry_at: float | None, now: float) -> NoKeyAvailable:
    offset = deps.wall_offset
    when = "" if retry_at is None else f"; the earliest key recovers at {render_wall(retry_at, offset)}"
    reasons = dict(decision.excluded)
    for key_id, refusal in req.refused.items():
        reasons[key_id] = describe(refusal, offset)
    return NoKeyAvailable(
        f"no key can serve {req.intent.model} before the deadline{when}",
        retry_at=retry_at,
        retry_after=None if retry_at is None else max(0.0, retry_at - now),
        reasons=reasons,
        refusals=tuple(req.refused.values()),
    )
