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
from collections.abc import Sequence

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
    "assess",
    "assess_sums",
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


# A window as the per-request paths read it: (bucket width, metric position in _METRICS, name, length,
# configured limit, whether a learned per-minute limit applies to it).
_Plan = tuple[float, int, str, float, int | None, bool]


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

    @functools.cached_property
    def plan(self) -> tuple[_Plan, ...]:
        """`windows` as plain tuples, for the per-request paths (no property calls, no enum compares)."""
        return tuple(
            (s.width, _METRICS.index(s.metric), s.name, s.length_s, s.limit, s.name in ("rpm", "tpm"))
            for s in self.windows
        )

    @functools.cached_property
    def limitable(self) -> tuple[tuple[int, _Plan], ...]:
        """The windows that can have a limit (configured, or learned per minute), with their positions."""
        return tuple((i, p) for i, p in enumerate(self.plan) if p[4] is not None or p[5])


@attrs.frozen
class _Ring:
    head: int  # absolute bucket index of counts[-1]
    counts: tuple[int, ...]  # oldest first, len = buckets + 1
    total: int = attrs.field(eq=False)  # sum(counts), kept running: reads are O(1)

    @total.default
    def _total(self) -> int:
        return sum(self.counts)


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
        fresh = math.inf
        for ring, p in zip(self.rings, self.config.plan, strict=True):
            end = (ring.head + 1) * p[0]
            if end < fresh:
                fresh = end
        return fresh


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
    rings = tuple(_Ring(math.floor(now / s.width), (0,) * (s.buckets + 1), 0) for s in config.windows)
    return Quota(config=config, rings=rings, rate=_Rate(at=now))


def _advance(ring: _Ring, width: float, now: float) -> _Ring:
    idx = math.floor(now / width)
    shift = idx - ring.head
    if shift <= 0:
        return ring
    counts = ring.counts
    n = len(counts)
    if shift >= n:
        return _Ring(idx, (0,) * n, 0)
    return _Ring(idx, counts[shift:] + (0,) * shift, ring.total - sum(counts[:shift]))


def _with(
    q: Quota,
    rings: tuple[_Ring, ...],
    learned: tuple[_Learned | None, _Learned | None],
    blocked_until: float | None,
    epoch: int,
    rate: _Rate,
    *,
    same_heads: bool = False,
) -> Quota:
    """A new quota (direct construction: `attrs.evolve` costs several times more on these paths).
    `same_heads`: `rings` sit where `q.rings` do (only counts changed), so `fresh_until` is `q`'s: it is
    primed in the new value's cache instead of being computed again."""
    new = Quota(q.config, rings, learned, blocked_until, epoch, rate)
    if same_heads:
        object.__setattr__(new, "fresh_until", q.fresh_until)  # the cached_property's slot
    return new


def effective(q: Quota, now: float) -> Quota:
    """The quota as of `now`: rings slid forward, an expired Retry-After block dropped."""
    blocked = q.blocked_until
    if now < q.fresh_until and (blocked is None or now < blocked):
        return q  # the common case, checked in O(1): nothing to slide, nothing expired
    rings = tuple([_advance(r, p[0], now) for r, p in zip(q.rings, q.config.plan, strict=True)])
    if blocked is not None and now >= blocked:
        blocked = None
    if rings == q.rings and blocked == q.blocked_until:
        return q
    return _with(q, rings, q.learned, blocked, q.epoch, q.rate)


def _plan_limit(q: Quota, p: _Plan) -> int | None:
    """A window's effective limit: the configured one, tightened by a learned per-minute limit."""
    limit = p[4]
    if p[5]:
        learned = q.learned[p[1]]
        if learned is not None and learned.limit is not None:
            limit = learned.limit if limit is None else min(limit, learned.limit)
    return limit


def usage(q: Quota, now: float) -> dict[str, tuple[int, int | None]]:
    """Per window: (used, effective limit) as of `now` — for snapshots and the debug channel."""
    q = effective(q, now)
    return {p[2]: (r.total, _plan_limit(q, p)) for p, r in zip(q.config.plan, q.rings, strict=True)}


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
    refusals: list[QuotaRefusal] | None = None
    if q.blocked_until is not None:
        refusals = [QuotaRefusal("retry-after", "provider asked to retry later", q.blocked_until)]
    needs = (1, tokens)
    for p, ring, spec in zip(q.config.plan, q.rings, q.config.windows, strict=True):
        limit = _plan_limit(q, p)
        if limit is None:
            continue
        need = needs[p[1]]
        used = ring.total
        if used + need <= limit:
            continue  # the common case: it fits, nothing to build
        refusals = refusals if refusals is not None else []
        name = p[2]
        unit = _METRICS[p[1]].value
        if need > limit:
            refusals.append(QuotaRefusal(name, f"needs {need} {unit}, limit is {limit}", None))
        else:
            retry = _drained_at(ring, spec, used + need - limit)
            refusals.append(QuotaRefusal(name, f"{name} limit {limit} reached ({used} used)", retry))
    for metric, learned, need in zip(_METRICS, q.learned, needs, strict=True):
        if learned is not None and learned.remaining < need and now < learned.reset_at:
            refusals = refusals if refusals is not None else []
            what = f"provider reports {learned.remaining} {metric.value} remaining"
            refusals.append(QuotaRefusal(f"provider {metric.value}", what, learned.reset_at))
    if refusals is None:
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
    res = QuotaReservation(now, tokens, q.epoch)
    return _count(q, res, 1, tokens, now, q.rate), res


def _count(
    q: Quota,
    res: QuotaReservation,
    requests: int,
    tokens: int,
    now: float,
    rate: _Rate,
    signal: QuotaSignal | None = None,
) -> Quota:
    """Add `requests` and `tokens` where `res` was counted (in the windows it is still inside, and in the
    learned counts of its epoch), with `rate` as the new usage rate, then learn from `signal` (as
    `apply_signal` would, after): one new quota."""
    q = effective(q, now)
    at = res.at
    deltas = (requests, tokens)
    rings: list[_Ring] = []
    for ring, p in zip(q.rings, q.config.plan, strict=True):
        delta = deltas[p[1]]
        counts = ring.counts
        n = len(counts)
        pos = n - 1 - (ring.head - math.floor(at / p[0]))
        if delta and 0 <= pos < n:  # else: nothing to add, or slid out of the window (nothing to undo)
            old = counts[pos]
            new = old + delta
            if new < 0:
                new = 0
            if pos == n - 1:  # the current bucket: the common case
                ring = _Ring(ring.head, counts[:-1] + (new,), ring.total + new - old)  # noqa: RUF005 - concat is faster
            else:
                ring = _Ring(ring.head, counts[:pos] + (new,) + counts[pos + 1 :], ring.total + new - old)  # noqa: RUF005
        rings.append(ring)
    learned = q.learned
    if res.epoch == q.epoch:
        req, tok = learned
        if req is not None and requests and now < req.reset_at:
            req = _Learned(req.limit, req.remaining - requests, req.reset_at)
        if tok is not None and tokens and now < tok.reset_at:
            tok = _Learned(tok.limit, tok.remaining - tokens, tok.reset_at)
        learned = (req, tok)
    if signal is not None and not signal.empty:
        learned, blocked = _learn(learned, q.blocked_until, signal, now)
        return _with(q, tuple(rings), learned, blocked, q.epoch + 1, rate, same_heads=True)
    return _with(q, tuple(rings), learned, q.blocked_until, q.epoch, rate, same_heads=True)


def release(q: Quota, res: QuotaReservation, now: float) -> Quota:
    """Undo a reservation exactly (the provider never counted that request)."""
    return _count(q, res, -1, -res.tokens, now, q.rate)


def settle(q: Quota, res: QuotaReservation, actual_tokens: int, now: float, signal: QuotaSignal | None = None) -> Quota:
    """The request happened: replace the estimate by `actual_tokens` and feed the usage rate. With the
    response's `signal`: `apply_signal(settle(q, res, actual_tokens, now), signal, now)` in one quota."""
    if actual_tokens < 0:
        raise ValueError("actual_tokens must be >= 0")
    old = q.rate
    reqs, toks = old.decayed(q.config.rate_tau_s, now)
    rate = _Rate(
        reqs + 1.0, toks + actual_tokens, now if now > old.at else old.at, now if old.since is None else old.since
    )
    return _count(q, res, 0, actual_tokens - res.tokens, now, rate, signal)


def apply_signal(q: Quota, signal: QuotaSignal, now: float) -> Quota:
    """Learn from a response's rate-limit headers (see the module docstring)."""
    if signal.empty:
        return q
    q = effective(q, now)
    learned, blocked = _learn(q.learned, q.blocked_until, signal, now)
    return _with(q, q.rings, learned, blocked, q.epoch + 1, q.rate, same_heads=True)


def _learn(
    learned: tuple[_Learned | None, _Learned | None], blocked: float | None, signal: QuotaSignal, now: float
) -> tuple[tuple[_Learned | None, _Learned | None], float | None]:
    """The learned counts and the Retry-After block after `signal` (a non-empty one)."""
    out = list(learned)
    pairs = (
        (signal.limit_requests, signal.remaining_requests, signal.reset_requests_s),
        (signal.limit_tokens, signal.remaining_tokens, signal.reset_tokens_s),
    )
    for i, (limit, remaining, reset_s) in enumerate(pairs):
        old = out[i]
        if remaining is not None:
            reset_at = now + (reset_s if reset_s is not None else _LEARNED_DEFAULT_RESET_S)
            known_limit = limit if limit is not None else (old.limit if old is not None else None)
            out[i] = _Learned(known_limit, remaining if remaining > 0 else 0, reset_at)
        elif limit is not None:
            out[i] = _Learned(limit, limit, now) if old is None else _Learned(limit, old.remaining, old.reset_at)
    if signal.retry_after_s is not None and signal.retry_after_s > 0:
        until = now + signal.retry_after_s
        blocked = until if blocked is None else max(blocked, until)
    return (out[0], out[1]), blocked


def earliest_reset(q: Quota, now: float) -> float | None:
    """The soonest time any counted usage or learned/blocked limit lets go (None: nothing to wait for)."""
    q = effective(q, now)
    times: list[float] = []
    if q.blocked_until is not None:
        times.append(q.blocked_until)
    for ring, spec in zip(q.rings, q.config.windows, strict=True):
        if ring.total:
            times.append(_drained_at(ring, spec, 1))
    times.extend(lrn.reset_at for lrn in q.learned if lrn is not None and lrn.active(now))
    return min(times) if times else None


def _fractions(q: Quota, now: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for p, ring in zip(q.config.plan, q.rings, strict=True):
        limit = _plan_limit(q, p)
        if limit is not None:
            left = limit - ring.total
            out.append((p[2], (left if left > 0 else 0) / limit if limit else 0.0))
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
    if q.blocked_until is not None:
        return Prediction(0.0, True, confidence, "retry-after")
    rates = (n_req / cfg.rate_tau_s, n_tok / cfg.rate_tau_s)  # by position in _METRICS
    candidates: list[tuple[float, bool, str]] = []
    for p, ring in zip(cfg.plan, q.rings, strict=True):
        rate = rates[p[1]]
        if rate <= 0.0:
            continue
        limit = _plan_limit(q, p)
        if limit is None:
            continue
        left = limit - ring.total
        candidates.append(((left if left > 0 else 0) / rate, rate * p[3] > limit, p[2]))
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
    you already have it). The prediction is computed only when it can change the state."""
    q = effective(q, now)
    cfg = q.config
    if q.blocked_until is not None:
        return Capacity(CapacityState.EXHAUSTED, 0.0, "retry-after")
    fractions = _fractions(q, now)
    if not fractions:
        frac, tightest = 1.0, None
    else:
        tightest, frac = min(fractions, key=_second)
    if frac <= 0.0:
        state = CapacityState.EXHAUSTED
    elif frac <= cfg.critical_below:
        state = CapacityState.CRITICAL
    elif frac <= cfg.constrained_below:
        state = CapacityState.CONSTRAINED
    else:
        state = CapacityState.ABUNDANT
    if state is CapacityState.ABUNDANT or state is CapacityState.CONSTRAINED:
        p = prediction if prediction is not None else predict(q, now)
        if (
            p.exhausts_before_reset
            and p.seconds_to_exhaustion is not None
            and p.seconds_to_exhaustion <= cfg.critical_horizon_s
            and p.confidence >= cfg.critical_confidence
        ):
            state = CapacityState.CRITICAL
    return Capacity(state, frac, tightest)


def _second(f: tuple[str, float]) -> float:
    return f[1]


def assess(q: Quota, now: float) -> tuple[Capacity, Prediction]:
    """`(capacity(q, now), predict(q, now))` in one pass over the windows: what a key's snapshot shows
    and the router ranks by, computed once per snapshot read. Equal to the two calls, value for value."""
    q = effective(q, now)
    return assess_sums(q.config, [ring.total for ring in q.rings], q.learned, q.blocked_until, q.rate, now)


def assess_sums(
    cfg: QuotaConfig,
    totals: Sequence[int],
    learned: tuple[_Learned | None, _Learned | None],
    blocked_until: float | None,
    r: _Rate,
    now: float,
) -> tuple[Capacity, Prediction]:
    """`assess` from a quota's parts (each window's running total), already effective at `now`."""
    tau = cfg.rate_tau_s
    elapsed = now - r.at
    decay = math.exp(-(elapsed if elapsed > 0.0 else 0.0) / tau)  # max/min by hand: same values, no calls
    n_req = r.requests * decay
    observed = 0.0 if r.since is None or now <= r.since else now - r.since
    confidence = (1.0 - math.exp(-n_req / cfg.confidence_events)) * (observed / tau if observed < tau else 1.0)
    if blocked_until is not None:
        return Capacity(CapacityState.EXHAUSTED, 0.0, "retry-after"), Prediction(0.0, True, confidence, "retry-after")
    rates = (n_req / tau, r.tokens * decay / tau)  # by position in _METRICS
    frac, tightest, candidates = 1.0, None, []  # candidates: (seconds to exhaustion, exhausts, window)
    for i, (_, m, name, length, limit, minute) in cfg.limitable:
        if minute:
            lrn = learned[m]
            if lrn is not None and lrn.limit is not None:
                limit = lrn.limit if limit is None or lrn.limit < limit else limit
        if limit is None:
            continue
        left = limit - totals[i]
        if left < 0:
            left = 0
        f = left / limit if limit else 0.0
        if tightest is None or f < frac:
            frac, tightest = f, name
        rate = rates[m]
        if rate > 0.0:
            candidates.append((left / rate, rate * length > limit, name))
    for m in (0, 1):  # the learned windows, by position in _METRICS
        lrn = learned[m]
        if lrn is None or now >= lrn.reset_at:
            continue
        left = lrn.remaining if lrn.remaining > 0 else 0
        if lrn.limit or lrn.remaining <= 0:
            f = left / lrn.limit if lrn.limit else 0.0
            if tightest is None or f < frac:
                frac, tightest = f, _PROVIDER_WINDOWS[m]
        if rates[m] > 0.0:
            secs = left / rates[m]
            candidates.append((secs, secs < lrn.reset_at - now, _PROVIDER_WINDOWS[m]))
    if not candidates:
        prediction = Prediction(None, False, confidence)
    else:  # the soonest among the windows that exhaust, else among all
        secs_, exhausts, window_ = min([c for c in candidates if c[1]] or candidates)
        prediction = Prediction(secs_, exhausts, confidence, window_)
    return Capacity(_state(cfg, frac, prediction), frac, tightest), prediction


def _state(cfg: QuotaConfig, frac: float, p: Prediction) -> CapacityState:
    if frac <= 0.0:
        return CapacityState.EXHAUSTED
    if frac <= cfg.critical_below:
        return CapacityState.CRITICAL
    if (
        p.exhausts_before_reset
        and p.seconds_to_exhaustion is not None
        and p.seconds_to_exhaustion <= cfg.critical_horizon_s
        and p.confidence >= cfg.critical_confidence
    ):
        return CapacityState.CRITICAL  # predicted to run out soon: route away before the 429
    return CapacityState.CONSTRAINED if frac <= cfg.constrained_below else CapacityState.ABUNDANT
