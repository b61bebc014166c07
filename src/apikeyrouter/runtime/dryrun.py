"""Dry-run: what a proposed policy set would change, against the keys as they are now. Nothing is sent.

Each request — given, or rebuilt from a recorded decision (model, client, team, objective) — is decided
twice by the router's own read-only `preview`: under the live policies and under the proposed ones.
Both read the same current snapshots, so every difference is the policies' doing: a different key or
provider, a refusal (and by which policy), the load shift per key, and the worst-case cost delta, from
a given request's own tokens or a recorded decision's (its estimated input tokens and max_tokens).
Budgets are not consulted: they are state, and a dry run changes none (a hard budget still refuses at
run time whatever a dry run said).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from apikeyrouter.actors.router import RouterActor
from apikeyrouter.domain.decision import RoutingDecision
from apikeyrouter.domain.policy import EffectivePolicy, Policy, RequestContext, resolve
from apikeyrouter.domain.request import RequestIntent, Usage
from apikeyrouter.domain.scoring import Weights
from apikeyrouter.runtime.registry import Registry

__all__ = ["DryRunRequest", "dry_run", "requests_from_decisions"]

_LISTED = 100  # changed and refused requests listed at most (the totals count them all)


@attrs.frozen
class DryRunRequest:
    model: str
    client: str | None = None
    tags: frozenset[str] = frozenset()
    objective: str | Weights | None = None
    intent: RequestIntent | None = None  # with it, the cost delta is known
    request_id: str = ""
    input_tokens: int | None = None  # a recorded decision's (without an intent): the cost delta is known too
    max_tokens: int | None = None

    @property
    def priced(self) -> bool:
        """Whether its worst case can be priced (its tokens are known)."""
        return self.intent is not None or (self.input_tokens is not None and self.max_tokens is not None)


def requests_from_decisions(decisions: Sequence[Mapping[str, Any]]) -> list[DryRunRequest]:
    """Recorded decisions (`GET /decisions`, `decisions.jsonl`) as requests to replay."""
    out = []
    for d in decisions:
        objective = d.get("objective")
        given, most = d.get("input_tokens"), d.get("max_tokens")
        out.append(
            DryRunRequest(
                model=str(d["model"]),
                client=d.get("client"),
                objective=objective if isinstance(objective, str) and objective != "custom" else None,
                request_id=str(d.get("request_id", "")),
                input_tokens=given if isinstance(given, int) and given >= 0 else None,
                max_tokens=most if isinstance(most, int) and most >= 0 else None,
            )
        )
    return out


@attrs.frozen
class _Outcome:
    key: str | None
    provider: str | None
    refused_by: str | None  # the policy that refused (or excluded every key), else None
    reason: str
    cost: Decimal | None


def _decide(reg: Registry, router: RouterActor, req: DryRunRequest, policies: Sequence[Policy], now: float) -> _Outcome:
    ident = None if req.client is None else reg.client_config(req.client)
    team = None if ident is None else ident.team
    eff: EffectivePolicy | None = None
    if policies:
        eff = resolve(policies, RequestContext(req.model, req.client, team, req.tags, now + reg.wall_offset))
    if eff is not None and eff.model_denied_by is not None:
        return _Outcome(None, None, eff.model_denied_by, f"model {eff.model} denied", None)
    model = req.model if eff is None else eff.model
    objective = req.objective or (eff.objective if eff is not None else None) or reg.routing.objective
    if ident is not None and req.objective is None and (eff is None or eff.objective is None) and ident.objective:
        objective = ident.objective
    decision = router.preview(model, objective, eff, req.client)
    if not decision.candidates:
        return _Outcome(None, None, _policy_of(decision), "no key the policies allow can serve it", None)
    best = decision.candidates[0]
    cost = _worst_case(reg, req, best.provider, model)
    if eff is not None and eff.max_cost is not None and cost is not None and cost > eff.max_cost:
        return _Outcome(None, None, eff.max_cost_by, f"worst case {cost} over the cap {eff.max_cost}", cost)
    return _Outcome(best.key_id, best.provider, None, "", cost)


def _policy_of(decision: RoutingDecision) -> str | None:
    for reason in decision.excluded.values():
        _, found, by = reason.partition("excluded by policy ")
        if found:
            return by
    return None


def _worst_case(reg: Registry, req: DryRunRequest, provider: str, model: str) -> Decimal | None:
    adapter = reg.adapter(provider)
    if adapter is None:
        return None
    if req.intent is not None:
        return adapter.estimate(attrs.evolve(req.intent, model=model)).worst_case_cost
    if req.input_tokens is None or req.max_tokens is None:
        return None
    return adapter.cost(model, Usage(req.input_tokens, req.max_tokens))  # all of max_tokens: the worst case


def dry_run(
    reg: Registry, router: RouterActor, proposed: Sequence[Policy], requests: Sequence[DryRunRequest], now: float
) -> dict[str, Any]:
    """The impact report (JSON values). `proposed` must already be valid (the caller validates)."""
    live = reg.policy_book.policies
    changed: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    by_policy: Counter[str] = Counter()
    before_load: Counter[str] = Counter()
    after_load: Counter[str] = Counter()
    delta = Decimal(0)  # over the requests served both ways (worst cases: the tokens are the request's)
    changed_total = refused_total = 0
    for req in requests:
        before, after = _decide(reg, router, req, live, now), _decide(reg, router, req, proposed, now)
        if before.key is not None:
            before_load[before.key] += 1
        if after.key is not None:
            after_load[after.key] += 1
        if after.key is None:
            refused_total += 1
            by_policy[after.refused_by or "(no key)"] += 1
            if len(refused) < _LISTED:
                refused.append({"request_id": req.request_id, "model": req.model, "client": req.client,
                                "policy": after.refused_by, "reason": after.reason})  # fmt: skip
        elif (before.key, before.provider) != (after.key, after.provider):
            changed_total += 1
            if len(changed) < _LISTED:
                changed.append({"request_id": req.request_id, "model": req.model, "client": req.client,
                                "before": {"key": before.key, "provider": before.provider},
                                "after": {"key": after.key, "provider": after.provider}})  # fmt: skip
        if None not in (before.cost, after.cost, before.key, after.key):
            delta += after.cost - before.cost  # type: ignore[operator]
    keys = sorted(before_load.keys() | after_load.keys())
    shift = {k: after_load[k] - before_load[k] for k in keys if after_load[k] != before_load[k]}
    return {
        "requests": len(requests),
        "allowed": len(requests) - refused_total,
        "refused_total": refused_total,
        "refused_by_policy": dict(by_policy),
        "refused": refused,
        "changed_total": changed_total,
        "changed": changed,
        "cost_delta": str(delta) if all(r.priced for r in requests) else None,
        "load_shift": shift,
    }
