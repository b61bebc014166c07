"""A routing decision as a value: the ranked `Candidate`s with their score breakdowns and, for the keys
left out, why. The router actor builds it; the request pipeline, `/decisions` and `inspect` read it; its
explanation text is rendered on read, never on the hot path."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.reconcile import Ratio
from apikeyrouter.domain.refusal import Refusal, describe
from apikeyrouter.domain.scoring import KeyView, ScoringConfig, Weights, score
from apikeyrouter.domain.walltime import render_wall

__all__ = ["Candidate", "RoutingDecision"]


@attrs.frozen
class Candidate:
    key_id: str
    provider: str
    score: float
    # What the score came from, so its breakdown is rendered only when someone reads it.
    view: KeyView = attrs.field(repr=False, eq=False)
    model: str = attrs.field(repr=False, eq=False)
    weights: Weights = attrs.field(repr=False, eq=False)
    scoring: ScoringConfig = attrs.field(repr=False, eq=False)
    # The reconcile ratio the cost component read at decision time (the live mapping moves on).
    ratio: Ratio | None = attrs.field(default=None, repr=False, eq=False)

    @functools.cached_property
    def breakdown(self) -> str:
        ratios = {} if self.ratio is None else {(self.provider, self.model): self.ratio}
        return score(self.view, self.model, self.weights, attrs.evolve(self.scoring, ratios=ratios)).explain()


@attrs.frozen
class RoutingDecision:
    id: str
    request_id: str
    at: float
    model: str
    objective: str
    candidates: tuple[Candidate, ...]
    excluded: Mapping[str, str]  # key id -> reason (keys tried by this request, plus examples)
    excluded_total: int
    excluded_by_kind: tuple[tuple[str, int], ...]
    retry_at: float | None  # no candidate: when one may recover by itself (None: never / unknown)
    serving: int  # keys that serve the model at all
    wall_offset: float = attrs.field(default=0.0, repr=False, eq=False)
    refused: tuple[Refusal, ...] = ()  # added after the decision: keys that refused when asked to reserve
    client: str | None = None  # who asked (a client id, never a token)
    policies: tuple[str, ...] = ()  # the policies that applied to the request
    policy_notes: tuple[str, ...] = ()  # what they did: "objective cost set by policy p1", ...
    # The request's estimates by provider: a reference to the request's own dict, filled once a key is
    # chosen (the decision is made before any estimate), read by `tokens`. Nothing is copied per decision.
    estimates: Mapping[str, CostEstimate] | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def tokens(self) -> tuple[int | None, int | None]:
        """(estimated input tokens, max output tokens) of the request at the chosen key's provider;
        (None, None) before it was estimated, or for a decision that chose no key."""
        est = None if self.estimates is None or not self.candidates else self.estimates.get(self.candidates[0].provider)
        return (None, None) if est is None else (est.input_tokens, est.max_output_tokens)

    @functools.cached_property
    def explanation(self) -> str:
        """Why: the chosen key's score breakdown, the runners-up, and every excluded key with its reason.
        Built on first read: most decisions are never explained to anyone."""
        parts: list[str] = []
        model = self.model
        if self.candidates:
            best = self.candidates[0]
            parts.append(f"chose {best.key_id} for {model} by {self.objective}: score {best.breakdown}")
            if len(self.candidates) > 1:
                parts.append("then " + ", ".join(f"{c.key_id} ({c.score:.3f})" for c in self.candidates[1:]))
        elif self.serving == 0:
            parts.append(f"no key serves {model}")
        else:
            retry = self.retry_at
            when = f"; earliest recovery {render_wall(retry, self.wall_offset)}" if retry is not None else ""
            parts.append(f"no key can serve {model} now{when}")
        if self.excluded:
            more = self.excluded_total - len(self.excluded)
            tail = f" (+{more} more)" if more > 0 else ""
            parts.append("excluded: " + "; ".join(self.excluded.values()) + tail)
        if self.policy_notes:
            parts.append("policy: " + "; ".join(self.policy_notes))
        if self.refused:
            # The decision ranked on snapshots; say which keys refused when asked to reserve.
            parts.append("refused at reservation: " + "; ".join(describe(r, self.wall_offset) for r in self.refused))
        return ". ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "at": self.at,
            "at_wall": render_wall(self.at, self.wall_offset),
            "model": self.model,
            "objective": self.objective,
            "client": self.client,
            "policies": list(self.policies),
            "chosen": self.candidates[0].key_id if self.candidates else None,
            "input_tokens": self.tokens[0],
            "max_tokens": self.tokens[1],
            "candidates": [
                {"key": c.key_id, "score": round(c.score, 4), "breakdown": c.breakdown} for c in self.candidates
            ],
            "excluded": dict(self.excluded),
            "excluded_total": self.excluded_total,
            "excluded_by_kind": dict(self.excluded_by_kind),
            "retry_at": self.retry_at,
            "retry_at_wall": None if self.retry_at is None else render_wall(self.retry_at, self.wall_offset),
            "explanation": self.explanation,
        }
