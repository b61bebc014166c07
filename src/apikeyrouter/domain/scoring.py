"""Eligibility and scoring of one key for one request, as pure functions of a frozen `KeyView`.

A `KeyView` is what a key actor publishes (its snapshot, flattened for the router). Two questions:

`eligibility(view, model, now, wall_offset=...)` — may this key serve now? `None` if yes, else an
`Excluded` with a human reason ("k2: throttled until 2026-12-01T12:04:05.000Z (Retry-After 30s)") and
`until`, the time it may become eligible by itself (None: only an event — an operator, a finished call — can).
Timed states are read lazily against `now`, like the machines they come from. Clock times in reasons
are `walltime.render_wall(t, wall_offset)`: the caller supplies the offset once, so this stays pure.

`score(view, model, weights)` — how good is it? Each component is in [0, 1], higher is better, and
depends on *this key's view only* — never on the other keys (no "share of the total", no min/max
normalisation across keys). That is what lets `index.KeyIndex` re-rank one key in O(log n) when its
view changes instead of rescoring everything. Components:

    reliability  success EWMA, halved while the breaker is half-open
    latency      1 / (1 + latency_ewma / latency_ref_s); 0.5 while unknown
    cost         1 / (1 + expected price per 1M tokens / cost_ref); 0.5 when the price is unknown. The
                 expected price weighs the input (1 - output_share) and output (output_share) prices
                 by the ratios learned for the key's (provider, model) (domain/reconcile.py: actual
                 input / our estimate, actual output / max_tokens); the worst case until one is learned
    fairness     1 / (1 + recent_requests / fairness_ref): fewer recent requests is better
    quality      the key's quality tier mapped to [0, 1] by whoever builds the view
    headroom     capacity fraction left, cut by a predicted exhaustion:
                 * (1 - confidence * exp(-seconds_to_exhaustion / prediction_horizon_s))
    load         1 - in_flight / in_flight_limit (or 1 / (1 + in_flight / 8) without a limit)

The score is the weighted mean of the components. Ties: scores are compared at `SCORE_RESOLUTION`
and equal ones go to the least-served key (`served`), then key id — so identical keys take turns
(round-robin) with no shared counter. "fairness" uses a key's own decayed request count rather than
its share of all traffic for the reason above; with the tie-break it spreads load without a rescan.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping

import attrs

from apikeyrouter.domain.circuit import BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import CapacityState, Prediction
from apikeyrouter.domain.reconcile import Ratio, expected_per_million
from apikeyrouter.domain.walltime import render_wall

__all__ = [
    "OBJECTIVES",
    "SCORE_RESOLUTION",
    "Excluded",
    "KeyView",
    "Score",
    "ScoringConfig",
    "Weights",
    "eligibility",
    "rank",
    "rank_key",
    "score",
    "score_value",
    "weights_for",
]

SCORE_RESOLUTION = 1e-3
_COMPONENTS = ("reliability", "cost", "latency", "fairness", "quality", "headroom", "load")


def _weight(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"weight {attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen(cache_hash=True)  # hashed on every decision (the index's orders and `_terms` are keyed by it)
class Weights:
    """Custom objective: relative weights (any scale; they are normalised). At least one must be > 0."""

    reliability: float = attrs.field(default=0.0, validator=_weight)
    cost: float = attrs.field(default=0.0, validator=_weight)
    latency: float = attrs.field(default=0.0, validator=_weight)
    fairness: float = attrs.field(default=0.0, validator=_weight)
    quality: float = attrs.field(default=0.0, validator=_weight)
    headroom: float = attrs.field(default=0.0, validator=_weight)
    load: float = attrs.field(default=0.0, validator=_weight)

    def __attrs_post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError("at least one weight must be > 0")

    @property
    def total(self) -> float:
        return float(sum(getattr(self, c) for c in _COMPONENTS))


def _preset(main: str) -> Weights:
    # Every preset keeps some reliability and headroom (routing away before a 429 matters whatever
    # the objective) and a little load spreading; the named component gets half the weight.
    w = {"reliability": 0.2, "headroom": 0.2, "load": 0.1}
    w[main] = w.get(main, 0.0) + 0.5
    return Weights(**w)


OBJECTIVES: Mapping[str, Weights] = {
    name: _preset(name) for name in ("reliability", "cost", "fairness", "latency", "quality")
}


def weights_for(objective: str | Weights) -> Weights:
    """A named objective's weights, or the custom `Weights` themselves. Unknown names raise ValueError."""
    if isinstance(objective, Weights):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {objective!r}; expected one of: {', '.join(OBJECTIVES)} "
            '(or, from code or the config file, weights such as {"cost": 0.6, "latency": 0.4})'
        ) from None


@attrs.frozen
class ScoringConfig:
    latency_ref_s: float = 2.0
    cost_ref_per_m: float = 1.0
    fairness_ref: float = 10.0
    prediction_horizon_s: float = 60.0
    output_share: float = 0.25  # for the blended price
    # Learned per (provider, model), read by the cost component: a live mapping the runtime updates in
    # place (a key re-ranks with what it holds when its view next changes). Not part of eq/hash.
    ratios: Mapping[tuple[str, str], Ratio] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class KeyView:
    """Everything the router needs to know about one key, as of `at` (trio seconds)."""

    key_id: str
    provider: str
    models: frozenset[str] = frozenset()  # empty: any model the provider accepts
    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict)
    default_price: ModelPrice | None = None
    lifecycle: KeyState = KeyState.ACTIVE
    lifecycle_until: float | None = None
    lifecycle_reason: str = ""
    retry_after_s: float | None = None  # the provider's Retry-After behind a throttle, for explanations
    breaker: BreakerState = BreakerState.CLOSED
    breaker_until: float | None = None  # OPEN: when it half-opens; HALF_OPEN with a probe: probe deadline
    probe_in_flight: bool = False
    in_flight: int = 0
    in_flight_limit: int | None = None
    capacity: CapacityState = CapacityState.ABUNDANT
    capacity_left: float = 1.0
    capacity_window: str | None = None
    capacity_retry_at: float | None = None  # EXHAUSTED: when a request fits again (None: unknown/never)
    prediction: Prediction | None = None
    success_ewma: float = 1.0
    latency_ewma_s: float | None = None
    recent_requests: float = 0.0  # decayed count of recent requests
    served: int = 0
    quality: float = 0.5
    at: float = 0.0

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def price_for(self, model: str) -> ModelPrice | None:
        return self.prices.get(model, self.default_price)


@attrs.frozen
class Excluded:
    key_id: str
    kind: str  # model | revoked | invalid | disabled | throttled | exhausted | circuit_open | probe | quota | in_flight
    reason: str  # "k2: throttled until 12:04:05 (Retry-After 30s)"
    until: float | None  # may become eligible by itself at this time; None: only an event can change it


@attrs.frozen
class Score:
    value: float
    parts: tuple[tuple[str, float, float], ...]  # (component, component value, normalised weight)

    def explain(self) -> str:
        terms = " + ".join(f"{name} {v:.2f}*{w:.2f}" for name, v, w in self.parts)
        return f"{self.value:.3f} = {terms}"


def _timed(view: KeyView, now: float, wall_offset: float) -> list[Excluded]:
    k = view.key_id
    out: list[Excluded] = []
    if view.lifecycle.timed and view.lifecycle_until is not None and now < view.lifecycle_until:
        what = "throttled" if view.lifecycle is KeyState.THROTTLED else "exhausted"
        why = f"Retry-After {view.retry_after_s:g}s" if view.retry_after_s is not None else view.lifecycle_reason
        tail = f" ({why})" if why else ""
        until = view.lifecycle_until
        out.append(Excluded(k, what, f"{k}: {what} until {render_wall(until, wall_offset)}{tail}", until))
    if view.breaker_until is not None and now < view.breaker_until:
        if view.breaker is BreakerState.OPEN:
            text = f"{k}: circuit open until {render_wall(view.breaker_until, wall_offset)}"
            out.append(Excluded(k, "circuit_open", text, view.breaker_until))
        elif view.breaker is BreakerState.HALF_OPEN and view.probe_in_flight:
            text = f"{k}: circuit half-open, probe in flight until {render_wall(view.breaker_until, wall_offset)}"
            out.append(Excluded(k, "probe", text, view.breaker_until))
    if view.capacity is CapacityState.EXHAUSTED and (view.capacity_retry_at is None or now < view.capacity_retry_at):
        window = f" ({view.capacity_window})" if view.capacity_window else ""
        when = "" if view.capacity_retry_at is None else f" until {render_wall(view.capacity_retry_at, wall_offset)}"
        out.append(Excluded(k, "quota", f"{k}: quota exhausted{window}{when}", view.capacity_retry_at))
    return out


def eligibility(view: KeyView, model: str | None, now: float, *, wall_offset: float = 0.0) -> Excluded | None:
    """None if the key may serve `model` at `now`; else the first reason it may not.

    `model=None` skips the model check (the index buckets by model itself). `until` is when every
    timed reason has passed, or None if any reason needs an event.
    """
    k = view.key_id
    if model is not None and not view.serves(model):
        return Excluded(k, "model", f"{k}: does not serve model {model}", None)
    if (
        view.lifecycle is KeyState.ACTIVE
        and view.breaker_until is None
        and view.capacity is not CapacityState.EXHAUSTED
        and (view.in_flight_limit is None or view.in_flight < view.in_flight_limit)
    ):
        return None  # the common case, with no reason text built: nothing timed, nothing at a limit
    if view.lifecycle in (KeyState.REVOKED, KeyState.INVALID, KeyState.DISABLED):
        reason = f" ({view.lifecycle_reason})" if view.lifecycle_reason else ""
        return Excluded(k, view.lifecycle.value, f"{k}: {view.lifecycle.value}{reason}", None)
    timed = _timed(view, now, wall_offset)
    if view.in_flight_limit is not None and view.in_flight >= view.in_flight_limit:
        text = f"{k}: at in-flight limit ({view.in_flight}/{view.in_flight_limit})"
        timed.append(Excluded(k, "in_flight", text, None))
    if not timed:
        return None
    untils = [e.until for e in timed]
    until = None if any(u is None for u in untils) else max(u for u in untils if u is not None)
    return attrs.evolve(timed[0], until=until)


def _reliability(view: KeyView, _model: str, _cfg: ScoringConfig) -> float:
    value = view.success_ewma * (0.5 if view.breaker is BreakerState.HALF_OPEN else 1.0)
    return min(1.0, max(0.0, value))


def _cost(view: KeyView, model: str, cfg: ScoringConfig) -> float:
    price = view.price_for(model)
    if price is None:
        return 0.5
    ratio = cfg.ratios.get((view.provider, model))
    per_m = expected_per_million(float(price.input), float(price.output), cfg.output_share, ratio)
    return 1.0 / (1.0 + per_m / cfg.cost_ref_per_m)


def _latency(view: KeyView, _model: str, cfg: ScoringConfig) -> float:
    return 0.5 if view.latency_ewma_s is None else 1.0 / (1.0 + view.latency_ewma_s / cfg.latency_ref_s)


def _fairness(view: KeyView, _model: str, cfg: ScoringConfig) -> float:
    return 1.0 / (1.0 + max(0.0, view.recent_requests) / cfg.fairness_ref)


def _quality(view: KeyView, _model: str, _cfg: ScoringConfig) -> float:
    return min(1.0, max(0.0, view.quality))


def _headroom(view: KeyView, _model: str, cfg: ScoringConfig) -> float:
    headroom = view.capacity_left
    p = view.prediction
    if p is not None and p.exhausts_before_reset and p.seconds_to_exhaustion is not None:
        headroom *= 1.0 - p.confidence * math.exp(-p.seconds_to_exhaustion / cfg.prediction_horizon_s)
    return min(1.0, max(0.0, headroom))


def _load(view: KeyView, _model: str, _cfg: ScoringConfig) -> float:
    if view.in_flight_limit:
        return max(0.0, 1.0 - view.in_flight / view.in_flight_limit)
    return 1.0 / (1.0 + view.in_flight / 8.0)


_COMPONENT = {
    "reliability": _reliability,
    "cost": _cost,
    "latency": _latency,
    "fairness": _fairness,
    "quality": _quality,
    "headroom": _headroom,
    "load": _load,
}


@functools.cache
def _terms(weights: Weights) -> tuple[tuple[str, Callable[[KeyView, str, ScoringConfig], float], float], ...]:
    """(component, its function, normalised weight) for the weights > 0, in `_COMPONENTS` order.
    Cached per `Weights` value (frozen, hashable): the few objectives in use are each computed once."""
    total = weights.total
    return tuple(
        (name, _COMPONENT[name], getattr(weights, name) / total) for name in _COMPONENTS if getattr(weights, name) > 0
    )


def score(view: KeyView, model: str, weights: Weights, cfg: ScoringConfig = ScoringConfig()) -> Score:
    """The weighted mean of the key's components for `model`, with the breakdown for explanations."""
    parts = tuple((name, part(view, model, cfg), w) for name, part, w in _terms(weights))
    return Score(sum(v * w for _, v, w in parts), parts)


def score_value(view: KeyView, model: str, weights: Weights, cfg: ScoringConfig = ScoringConfig()) -> float:
    """`score(...).value` without the breakdown: only the weighted components are computed (the same
    floating-point operations in the same order, so the value is identical)."""
    return sum([part(view, model, cfg) * w for _, part, w in _terms(weights)])


def rank_key(
    view: KeyView, model: str, weights: Weights, cfg: ScoringConfig = ScoringConfig()
) -> tuple[int, int, str, float]:
    """Sort key, best first: (-quantised score, served, key id, exact score)."""
    value = score_value(view, model, weights, cfg)
    return (-round(value / SCORE_RESOLUTION), view.served, view.key_id, value)


def rank(
    views: Iterable[KeyView],
    model: str,
    objective: str | Weights,
    now: float,
    k: int,
    cfg: ScoringConfig = ScoringConfig(),
) -> list[tuple[str, float]]:
    """The top `k` eligible keys by a full scan — the reference `KeyIndex.top` must agree with."""
    weights = weights_for(objective)
    keys = sorted(rank_key(v, model, weights, cfg) for v in views if eligibility(v, model, now) is None)
    return [(key_id, value) for _, _, key_id, value in keys[:k]]
