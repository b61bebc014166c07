"""Quota windows per key: configured limits, limits learned from headers, capacity and prediction.

Windows. Four sliding windows, always tracked (a None limit means unlimited, but usage is still
counted so a limit learned later applies at once): requests/minute, tokens/minute, requests/day and
tokens/month (a month is 30 days: the trio clock has no calendar). Each is a ring of
`buckets + 1` integer counts — fixed memory per key whatever the traffic. Bucket `k` covers
`[k*w, (k+1)*w)` with `w = length / buckets`; at time `t` the ring counts buckets
`floor(t/w) - buckets .. floor(t/w)`, a span of *at least* `length`. Counting a little extra (never
less) is what makes the guarantee hold: every admission at `t` has seen every live reservation made
in `[t - length, t]`, so no window of `length` ever holds more than its limit.

Reservations. `reserve` counts one request and its estimated tokens in every window (and in the
learned remaining counts); it returns a `QuotaReservation` that records where it was counted.
`release` removes exactly that (a bucket that has since slid out of its window needs nothing), so
reserve-then-release is the identity. `settle` replaces the estimate by the actual token count and
feeds the usage-rate estimate. Use `release` only when the provider never counted the request
(cancelled before sending); a failure the provider saw should be settled (with its usage, maybe 0).

Learning from headers. `apply_signal` records the provider's `remaining`/`limit`/`reset` per metric.
Until the reset passes, our own reservations decrement the learned remaining count, and it refuses
like any window. A learned `limit` also tightens the per-minute window of its metric (OpenAI's and
Anthropic's `*-limit-requests/-tokens` describe per-minute limits). `Retry-After` blocks the quota
until then. Each signal starts a new `epoch`: reservations from an older epoch do not give their
learned counts back on release/settle, since the provider's fresh figure already accounts for them.

Capacity. `fraction_left` is the minimum, across windows with a limit, of `(limit - used) / limit`
(learned windows use `remaining / limit`). States: ABUNDANT above `constrained` (default 0.5),
CONSTRAINED above `critical` (0.15), CRITICAL above 0, EXHAUSTED at 0 or while blocked. A key
*predicted* to exhaust within `critical_horizon_s` with confidence >= `critical_confidence` is at
least CRITICAL, so the router routes away before the 429.

Prediction. The recent usage rate is an exponentially decayed count of settled requests and tokens
(time constant `rate_tau_s`): `n(t) = n(t0) * exp(-(t - t0)/tau) + new`, rate = `n / tau` per second.
For each limited window, seconds to exhaustion = `left / rate`. A sliding window exhausts only if the
sustained rate exceeds its limit (`rate * length > limit`); a learned window exhausts if it runs out
before its reset. Confidence, from how much recent data there is::

    confidence = (1 - exp(-n_requests / confidence_events)) * min(1, observed_for / tau)

— near 0 with a handful of requests or a few seconds of history, near 1 with dozens of requests over
a full `tau`.
"""

from __future__ import annotations

import enum
import functools
import math

import attrs

from apikeyrouter.domain.signal import QuotaSignal

__all__ = [
    "Capacity",
    "CapacityState",
    "Metric",
    "Prediction",
    "Quota",
    "QuotaConfig",
    "QuotaRefusal",
    "QuotaReservation",
    "WindowSpec",
    "apply_signal",
    "available_at",
    "can_reserve",
    "capacity",
    "earliest_reset",
    "effective",
    "new_quota",
    "predict",
    "release",
    "reserve",
    "settle",
    "take",
    "usage",
]

_DAY = 86_400.0
_LEARNED_DEFAULT_RESET_S = 60.0


class Metric(enum.Enum):
    REQUESTS = "requests"
    TOKENS = "tokens"


# Iterating the enum class runs a generator and hashing a member runs Python code: the hot paths below
# zip with this tuple and index by position instead.
_METRICS = (Metric.REQUESTS, Metric.TOKENS)
_PROVIDER_WINDOWS = tuple(f"provider {m.value}" for m in _METRICS)  # learned windows' names, by position


class CapacityState(enum.Enum):
    ABUNDANT = "abundant"
    CONSTRAINED = "constrained"
    CRITICAL = "critical"
    EXHAUSTED = "exhausted"


@attrs.frozen
class WindowSpec:
    name: str
    metric: Metric
    length_s: float
    buckets: int
    limit: int | None

    @property
    def width(self) -> float:
        return self.length_s / self.buckets


def _opt_limit(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name} must be None or >= 0, got {value!r}")


@attrs.frozen
class QuotaConfig:
    rpm: int | None = attrs.field(default=None, validator=_opt_limit)
    tpm: int | None = attrs.field(default=None, validator=_opt_limit)
    rpd: int | None = attrs.field(default=None, validator=_opt_limit)
    tokens_per_month: int | None = attrs.field(default=None, validator=_opt_limit)
    constrained_below: float = 0.5
    critical_below: float = 0.15
    rate_tau_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))
    confidence_events: float = attrs.field(default=5.0, validator=attrs.validators.gt(0.0))
    critical_horizon_s: float = 30.0
    critical_confidence: float = 0.5
    windows: tuple[WindowSpec, ...] = attrs.field(init=False)

    @windows.default
    def _windows(self) -> tuple[WindowSpec, ...]:
        return (
            WindowSpec("rpm", Metric.REQUESTS, 60.0, 12, self.rpm),
            WindowSpec("tpm", Metric.TOKENS, 60.0, 12, self.tpm),
            WindowSpec("rpd", Metric.REQUESTS, _DAY, 24, self.rpd),
            WindowSpec("tokens/month", Metric.TOKENS, 30 * _DAY, 30, self.tokens_per_month),
        )


@attrs.frozen
class _Ring:
    head: int  # absolute bucket index of counts[-1]
    counts: tuple[int, ...]  # oldest first, len = buckets + 1


@attrs.frozen
class _Learned:
    limit: int | None
    remaining: int
    reset_at: float

    def active(self, now: float) -> bool:
        return now < self.reset_at


@attrs.frozen
class _Rate:
    requests: float = 0.0  # decayed counts as of `at`
    tokens: float = 0.0
    at: float = 0.0
    since: float | None = None  # first settled request

    def decayed(self, tau: float, now: float) -> tuple[float, float]:
        f = math.exp(-max(0.0, now - self.at) / tau)
        return self.requests * f, self.tokens * f


@attrs.frozen
class Quota:
    config: QuotaConfig
    rings: tuple[_Ring, ...]
    learned: tuple[_Learned | None, _Learned | None] = (None, None)  # (requests, tokens)
    blocked_until: float | None = None
    epoch: int = 0
    rate: _Rate = _Rate()

    @functools.cached_property
    def fresh_until(self) -> float:
        """Until this time no ring needs to slide (`effective` is then the identity, minus blocking)."""
        return min((r.head + 1) * s.width for r, s in zip(self.rings, self.config.windows, strict=True))


@attrs.frozen
class QuotaReservation:
    """Where a reservation was counted; hand it back to `settle` or `release`."""

    at: float
    tokens: int
    epoch: int


@attrs.frozen
class QuotaRefusal:
    window: str
    reason: str
    retry_at: float | None  # None: this request can never fit (bigger than the limit itself)


@attrs.frozen
class Capacity:
    state: CapacityState
    fraction_left: float  # 1.0 when nothing is limited
    tightest: str | None  # the window with the least left


@attrs.frozen
class Prediction:
    seconds_to_exhaustion: float | None
    exhausts_before_reset: bool
    confidence: float
    window: str | None = None


def new_quota(config: QuotaConfig, now: float) -> Quota:
    rings = tuple(_Ring(math.floor(now / s.width), (0,) * (s.buckets + 1)) for s in config.windows)
    return Quota(config=config, rings=rings, rate=_Rate(at=now))


def _advance(ring: _Ring, spec: WindowSpec, now: float) -> _Ring:
    idx = math.floor(now / spec.width)
    shift = idx - ring.head
    if shift <= 0:
        return ring
    n = len(ring.counts)
    counts = (0,) * n if shift >= n else ring.counts[shift:] + (0,) * shift
    return _Ring(idx, counts)


def _add(ring: _Ring, spec: WindowSpec, at: float, delta: int) -> _Ring:
    pos = len(ring.counts) - 1 - (ring.head - math.floor(at / spec.width))
    if pos < 0 or pos >= len(ring.counts) or delta == 0:
        return ring  # slid out of the window already: nothing left to undo
    counts = list(ring.counts)
    counts[pos] = max(0, counts[pos] + delta)
    return _Ring(ring.head, tuple(counts))


def effective(q: Quota, now: float) -> Quota:
    """The quota as of `now`: rings slid forward, an expired Retry-After block dropped."""
    if now < q.fresh_until and (q.blocked_until is None or now < q.blocked_until):
        return q  # the common case, checked in O(1): nothing to slide, nothing expired
    rings = tuple(_advance(r, s, now) for r, s in zip(q.rings, q.config.windows, strict=True))
    blocked = q.blocked_until if q.blocked_until is not None and now < q.blocked_until else None
    if rings == q.rings and blocked == q.blocked_until:
        return q
    return attrs.evolve(q, rings=rings, blocked_until=blocked)


def _limit(q: Quota, i: int, now: float) -> int | None:
    spec = q.config.windows[i]
    limit = spec.limit
    if spec.name in ("rpm", "tpm"):
        learned = q.learned[0 if spec.metric is Metric.REQUESTS else 1]
        if learned is not None and learned.limit is not None:
            limit = learned.limit if limit is None else min(limit, learned.limit)
    return limit


def usage(q: Quota, now: float) -> dict[str, tuple[int, int | None]]:
    """Per window: (used, effective limit) as of `now` — for snapshots and the debug channel."""
    q = effective(q, now)
    return {
        s.name: (sum(r.counts), _limit(q, i, now))
        for i, (s, r) in enumerate(zip(q.config.windows, q.rings, strict=True))
    }


def _drained_at(ring: _Ring, spec: WindowSpec, excess: int) -> float:
    """When at least `excess` counted units will have slid out of the window."""
    n = len(ring.counts)
    dropped = 0
    for j, c in enumerate(ring.counts):
        dropped += c
        if dropped >= excess:
            k = ring.head - (n - 1) + j
            return (k + n) * spec.width
    return (ring.head + n) * spec.width  # unreachable while excess <= used


def can_reserve(q: Quota, tokens: int, now: float) -> QuotaRefusal | None:
    """None if one request of `tokens` fits now; else the refusal with the latest retry time."""
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    q = effective(q, now)
    refusals: list[QuotaRefusal] = []
    if q.blocked_until is not None:
        refusals.append(QuotaRefusal("retry-after", "provider asked to retry later", q.blocked_until))
    for i, (spec, ring) in enumerate(zip(q.config.windows, q.rings, strict=True)):
        limit = _limit(q, i, now)
        if limit is None:
            continue
        need = 1 if spec.metric is Metric.REQUESTS else tokens
        used = sum(ring.counts)
        if need > limit:
            refusals.append(QuotaRefusal(spec.name, f"needs {need} {spec.metric.value}, limit is {limit}", None))
        elif used + need > limit:
            retry = _drained_at(ring, spec, used + need - limit)
            refusals.append(QuotaRefusal(spec.name, f"{spec.name} limit {limit} reached ({used} used)", retry))
    for metric, learned in zip(_METRICS, q.learned, strict=True):
        need = 1 if metric is Metric.REQUESTS else tokens
        if learned is not None and learned.active(now) and learned.remaining < need:
            refusals.append(
                QuotaRefusal(
                    f"provider {metric.value}",
                    f"provider reports {learned.remaining} {metric.value} remaining",
                    learned.reset_at,
                )
            )
    if not refusals:
        return None
    never = [r for r in refusals if r.retry_at is None]
    if never:
        return never[0]
    return max(refusals, key=lambda r: r.retry_at or 0.0)


def available_at(q: Quota, tokens: int, now: float) -> float | None:
    """When a request of `tokens` would fit: `now` if it does, None if it never will."""
    refusal = can_reserve(q, tokens, now)
    return now if refusal is None else refusal.retry_at


def reserve(q: Quota, tokens: int, now: float) -> tuple[Quota, QuotaReservation | QuotaRefusal]:
    """Count one request and its estimated `tokens` in every window, or refuse (quota unchanged)."""
    refusal = can_reserve(q, tokens, now)
    if refusal is not None:
        return q, refusal
    return take(q, tokens, now)


def take(q: Quota, tokens: int, now: float) -> tuple[Quota, QuotaReservation]:
    """`reserve` for a caller that has just seen `can_reserve(q, tokens, now)` admit it: counts without
    checking again (the same quota at the same time gives the same answer)."""
    q = effective(q, now)
    res = QuotaReservation(at=now, tokens=tokens, epoch=q.epoch)
    return _count(q, res, requests=1, tokens=tokens, now=now), res


def _count(q: Quota, res: QuotaReservation, *, requests: int, tokens: int, now: float) -> Quota:
    q = effective(q, now)
    rings = tuple(
        _add(ring, spec, res.at, requests if spec.metric is Metric.REQUESTS else tokens)
        for ring, spec in zip(q.rings, q.config.windows, strict=True)
    )
    learned = q.learned
    if res.epoch == q.epoch:
        req, tok = (
            _Learned(lrn.limit, lrn.remaining - (requests if m is Metric.REQUESTS else tokens), lrn.reset_at)
            if lrn is not None and lrn.active(now)
            else lrn
            for m, lrn in zip(_METRICS, q.learned, strict=True)
        )
        learned = (req, tok)
    return attrs.evolve(q, rings=rings, learned=learned)


def release(q: Quota, res: QuotaReservation, now: float) -> Quota:
    """Undo a reservation exactly (the provider never counted that request)."""
    return _count(q, res, requests=-1, tokens=-res.tokens, now=now)


def settle(q: Quota, res: QuotaReservation, actual_tokens: int, now: float) -> Quota:
    """The request happened: replace the estimate by `actual_tokens` and feed the usage rate."""
    if actual_tokens < 0:
        raise ValueError("actual_tokens must be >= 0")
    q = _count(q, res, requests=0, tokens=actual_tokens - res.tokens, now=now)
    tau = q.config.rate_tau_s
    reqs, toks = q.rate.decayed(tau, now)
    rate = _Rate(
        requests=reqs + 1.0,
        tokens=toks + actual_tokens,
        at=max(now, q.rate.at),
        since=now if q.rate.since is None else q.rate.since,
    )
    return attrs.evolve(q, rate=rate)


def apply_signal(q: Quota, signal: QuotaSignal, now: float) -> Quota:
    """Learn from a response's rate-limit headers (see the module docstring)."""
    if signal.empty:
        return q
    q = effective(q, now)
    learned = list(q.learned)
    pairs = (
        (signal.limit_requests, signal.remaining_requests, signal.reset_requests_s),
        (signal.limit_tokens, signal.remaining_tokens, signal.reset_tokens_s),
    )
    for i, (limit, remaining, reset_s) in enumerate(pairs):
        old = learned[i]
        if remaining is not None:
            reset_at = now + (reset_s if reset_s is not None else _LEARNED_DEFAULT_RESET_S)
            known_limit = limit if limit is not None else (old.limit if old is not None else None)
            learned[i] = _Learned(limit=known_limit, remaining=max(0, remaining), reset_at=reset_at)
        elif limit is not None:
            learned[i] = (
                _Learned(limit=limit, remaining=limit, reset_at=now) if old is None else attrs.evolve(old, limit=limit)
            )
    blocked = q.blocked_until
    if signal.retry_after_s is not None and signal.retry_after_s > 0:
        until = now + signal.retry_after_s
        blocked = until if blocked is None else max(blocked, until)
    return attrs.evolve(q, learned=(learned[0], learned[1]), blocked_until=blocked, epoch=q.epoch + 1)


def earliest_reset(q: Quota, now: float) -> float | None:
    """The soonest time any counted usage or learned/blocked limit lets go (None: nothing to wait for)."""
    q = effective(q, now)
    times: list[float] = []
    if q.blocked_until is not None:
        times.append(q.blocked_until)
    for ring, spec in zip(q.rings, q.config.windows, strict=True):
        if any(ring.counts):
            times.append(_drained_at(ring, spec, 1))
    times.extend(lrn.reset_at for lrn in q.learned if lrn is not None and lrn.active(now))
    return min(times) if times else None


def _fractions(q: Quota, now: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for i, (spec, ring) in enumerate(zip(q.config.windows, q.rings, strict=True)):
        limit = _limit(q, i, now)
        if limit is not None:
            out.append((spec.name, max(0, limit - sum(ring.counts)) / limit if limit else 0.0))
    for window, lrn in zip(_PROVIDER_WINDOWS, q.learned, strict=True):
        if lrn is not None and now < lrn.reset_at:  # lrn.active(now), inline: this runs per snapshot
            if lrn.limit:
                out.append((window, max(0, lrn.remaining) / lrn.limit))
            elif lrn.remaining <= 0:
                out.append((window, 0.0))
    return out


def predict(q: Quota, now: float) -> Prediction:
    """Time to exhaustion at the recent usage rate, with a confidence (module docstring)."""
    q = effective(q, now)
    cfg = q.config
    n_req, n_tok = q.rate.decayed(cfg.rate_tau_s, now)
    observed = 0.0 if q.rate.since is None else max(0.0, now - q.rate.since)
    confidence = (1.0 - math.exp(-n_req / cfg.confidence_events)) * min(1.0, observed / cfg.rate_tau_s)
    rates = (n_req / cfg.rate_tau_s, n_tok / cfg.rate_tau_s)  # by position in _METRICS
    if q.blocked_until is not None:
        return Prediction(0.0, True, confidence, "retry-after")
    candidates: list[tuple[float, bool, str]] = []
    for i, (spec, ring) in enumerate(zip(cfg.windows, q.rings, strict=True)):
        limit = _limit(q, i, now)
        rate = rates[0 if spec.metric is Metric.REQUESTS else 1]
        if limit is None or rate <= 0.0:
            continue
        left = max(0, limit - sum(ring.counts))
        candidates.append((left / rate, rate * spec.length_s > limit, spec.name))
    for rate, window, lrn in zip(rates, _PROVIDER_WINDOWS, q.learned, strict=True):
        if lrn is not None and now < lrn.reset_at and rate > 0.0:
            secs = max(0, lrn.remaining) / rate
            candidates.append((secs, secs < lrn.reset_at - now, window))
    if not candidates:
        return Prediction(None, False, confidence)
    exhausting = [c for c in candidates if c[1]]
    secs, exhausts, window = min(exhausting or candidates)
    return Prediction(secs, exhausts, confidence, window)


def capacity(q: Quota, now: float, prediction: Prediction | None = None) -> Capacity:
    """Capacity state as of `now` (module docstring), prediction included (pass `predict(q, now)` if
    you already have it)."""
    q = effective(q, now)
    cfg = q.config
    fractions = _fractions(q, now)
    if q.blocked_until is not None:
        return Capacity(CapacityState.EXHAUSTED, 0.0, "retry-after")
    if not fractions:
        frac, tightest = 1.0, None
    else:
        tightest, frac = min(fractions, key=lambda f: f[1])
    if frac <= 0.0:
        state = CapacityState.EXHAUSTED
    elif frac <= cfg.critical_below:
        state = CapacityState.CRITICAL
    elif frac <= cfg.constrained_below:
        state = CapacityState.CONSTRAINED
    else:
        state = CapacityState.ABUNDANT
    if state in (CapacityState.ABUNDANT, CapacityState.CONSTRAINED):
        p = prediction if prediction is not None else predict(q, now)
        if (
            p.exhausts_before_reset
            and p.seconds_to_exhaustion is not None
            and p.seconds_to_exhaustion <= cfg.critical_horizon_s
            and p.confidence >= cfg.critical_confidence
        ):
            state = CapacityState.CRITICAL
    return Capacity(state, frac, tightest)
