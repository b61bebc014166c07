"""`LiveQuota`: a key's quota windows as mutable state, for the one actor that owns them.

`domain/quota.py` is the rule: pure functions from a frozen `Quota` to a new one. A key changes its
quota twice per request (reserve, settle), and building a new frozen value each time (four rings, a
reservation, learned counts, the quota itself) was the largest single cost of a key's handlers. Here
the same rule is applied in place: the rings are lists with running totals, a reservation adds to one
bucket, a settlement corrects it. `freeze()` gives the frozen `Quota` the pure functions would have
produced (a test holds every operation equal to its pure counterpart, value for value, after any
sequence), built only when someone reads it (a snapshot, the store) and cached until the next change.

Mutable by design and private to its owner (the key actor): nobody else holds one. Everything others
see is a frozen `Quota` from `freeze()`. The rare paths (a refusal's reason and retry time, capacity,
prediction, usage) run the pure functions on `freeze()`; only the per-request ones are written here.
"""

from __future__ import annotations

import math

from apikeyrouter.domain import quota
from apikeyrouter.domain.quota import (
    Capacity,
    CapacityState,
    Prediction,
    Quota,
    QuotaConfig,
    QuotaRefusal,
    QuotaReservation,
)
from apikeyrouter.domain.signal import QuotaSignal

__all__ = ["Figures", "LiveQuota", "figures"]

# What the router ranks and filters on: capacity, prediction, the decayed request count and, when
# exhausted, when one request fits again.
Figures = tuple[Capacity, Prediction, float, float | None]


def figures(q: Quota, now: float) -> Figures:
    """The router's figures of a frozen quota as of `now` (`LiveQuota.figures` of the same windows)."""
    cap, prediction = quota.assess(q, now)
    n_requests, _ = q.rate.decayed(q.config.rate_tau_s, now)
    retry_at = quota.available_at(q, 1, now) if cap.state is CapacityState.EXHAUSTED else None
    return cap, prediction, n_requests, retry_at


class LiveQuota:
    """One key's windows, changed in place by the rules of `domain/quota.py` (module docstring)."""

    __slots__ = (
        "_frozen",
        "_rings",
        "blocked_until",
        "config",
        "counts",
        "epoch",
        "fresh_until",
        "heads",
        "learned",
        "rate",
        "totals",
    )

    def __init__(self, q: Quota) -> None:
        self.config: QuotaConfig = q.config
        self.heads: list[int] = [r.head for r in q.rings]
        # The buckets as lists once a count changes (`_thaw`); until then `_rings` holds them: a key that
        # never served keeps one copy of its windows, not two.
        self.counts: list[list[int]] = []
        self._rings: tuple[quota._Ring, ...] | None = q.rings
        self.totals: list[int] = [r.total for r in q.rings]
        self.learned = q.learned
        self.blocked_until = q.blocked_until
        self.epoch = q.epoch
        self.rate = q.rate
        # `q.fresh_until`, computed from the specs: reading the cached property would build the config's
        # `plan` for a key that may never serve.
        self.fresh_until: float = min(
            [(r.head + 1) * spec.width for r, spec in zip(q.rings, q.config.windows, strict=True)]
        )
        self._frozen: Quota | None = q

    @classmethod
    def new(cls, config: QuotaConfig, now: float) -> LiveQuota:
        return cls(quota.new_quota(config, now))

    def freeze(self) -> Quota:
        """The frozen quota as of the last change (built once per change, when first asked for)."""
        q = self._frozen
        if q is None:
            rings = self._rings or tuple(
                quota._Ring(head, tuple(counts), total)
                for head, counts, total in zip(self.heads, self.counts, self.totals, strict=True)
            )
            q = Quota(self.config, rings, self.learned, self.blocked_until, self.epoch, self.rate)
            object.__setattr__(q, "fresh_until", self.fresh_until)  # the cached_property's slot: the same value
            self._frozen = q
        return q

    def figures(self, now: float) -> Figures:
        """`figures(self.freeze(), now)` for a `now` not before the last change. Read-only: from the
        running totals while no ring needs to slide, else from `freeze()`."""
        blocked = self.blocked_until
        if not (now < self.fresh_until and (blocked is None or now < blocked)):
            return figures(self.freeze(), now)
        cap, prediction = quota.assess_sums(self.config, self.totals, self.learned, blocked, self.rate, now)
        n_requests, _ = self.rate.decayed(self.config.rate_tau_s, now)
        retry_at = quota.available_at(self.freeze(), 1, now) if cap.state is CapacityState.EXHAUSTED else None
        return cap, prediction, n_requests, retry_at

    def _thaw(self) -> list[list[int]]:
        """The buckets as lists, made on the first change of a count."""
        if self._rings is not None:
            self.counts = [list(r.counts) for r in self._rings]
            self._rings = None
        return self.counts

    # -- the per-request rules, in place ----------------------------------------------------------

    def effective(self, now: float) -> None:
        """`quota.effective`: rings slid forward to `now`, an expired Retry-After block dropped."""
        blocked = self.blocked_until
        if now < self.fresh_until and (blocked is None or now < blocked):
            return
        changed = False
        fresh = math.inf
        for i, p in enumerate(self.config.plan):
            width = p[0]
            idx = math.floor(now / width)
            head = self.heads[i]
            shift = idx - head
            if shift > 0:
                changed = True
                counts = (self.counts or self._thaw())[i]
                n = len(counts)
                if shift >= n:
                    self.counts[i] = [0] * n
                    self.totals[i] = 0
                else:
                    self.totals[i] -= sum(counts[:shift])
                    self.counts[i] = counts[shift:] + [0] * shift
                self.heads[i] = head = idx
            end = (head + 1) * width
            if end < fresh:
                fresh = end
        self.fresh_until = fresh
        if blocked is not None and now >= blocked:
            self.blocked_until = None
            changed = True
        if changed:
            self._frozen = None

    def fits(self, tokens: int, now: float) -> bool:
        """True when one request of `tokens` fits now (`quota.can_reserve` would return None), checked
        on the running totals; False when it may not (then ask `refusal` why)."""
        self.effective(now)
        if self.blocked_until is not None:
            return False
        learned = self.learned
        needs = (1, tokens)
        totals = self.totals
        for i, (_, m, _name, _length, limit, minute) in self.config.limitable:
            if minute:
                lrn = learned[m]
                if lrn is not None and lrn.limit is not None:
                    limit = lrn.limit if limit is None or lrn.limit < limit else limit
            if limit is not None and totals[i] + needs[m] > limit:
                return False
        for m in (0, 1):
            lrn = learned[m]
            if lrn is not None and lrn.remaining < needs[m] and now < lrn.reset_at:
                return False
        return True

    def refusal(self, tokens: int, now: float) -> QuotaRefusal | None:
        """`quota.can_reserve` on the current windows: the running totals first, the pure rule (with its
        reasons and retry time) only when they do not admit the request."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if self.fits(tokens, now):
            return None
        return quota.can_reserve(self.freeze(), tokens, now)

    def take(self, tokens: int, now: float) -> QuotaReservation:
        """`quota.take`: count one request of `tokens` (the caller has seen it fit)."""
        self.effective(now)
        res = QuotaReservation(now, tokens, self.epoch)
        self._count(res, 1, tokens, now, None)
        return res

    def settle(self, res: QuotaReservation, actual_tokens: int, now: float, signal: QuotaSignal | None = None) -> None:
        """`quota.settle`: the estimate replaced by `actual_tokens`, the usage rate fed, `signal` learned."""
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        old = self.rate
        reqs, toks = old.decayed(self.config.rate_tau_s, now)
        self.rate = quota._Rate(
            reqs + 1.0, toks + actual_tokens, now if now > old.at else old.at, now if old.since is None else old.since
        )
        self._frozen = None
        self._count(res, 0, actual_tokens - res.tokens, now, signal)

    def release(self, res: QuotaReservation, now: float) -> None:
        """`quota.release`: the reservation undone exactly."""
        self._count(res, -1, -res.tokens, now, None)

    def apply_signal(self, signal: QuotaSignal, now: float) -> None:
        """`quota.apply_signal`."""
        if signal.empty:
            return
        self.effective(now)
        self.learned, self.blocked_until = quota._learn(self.learned, self.blocked_until, signal, now)
        self.epoch += 1
        self._frozen = None

    def _count(
        self, res: QuotaReservation, requests: int, tokens: int, now: float, signal: QuotaSignal | None
    ) -> None:
        """`quota._count`, in place."""
        self.effective(now)
        self._frozen = None
        at = res.at
        deltas = (requests, tokens)
        rings = self.counts or self._thaw()
        for i, p in enumerate(self.config.plan):
            delta = deltas[p[1]]
            if not delta:
                continue
            counts = rings[i]
            n = len(counts)
            pos = n - 1 - (self.heads[i] - math.floor(at / p[0]))
            if 0 <= pos < n:  # else: slid out of the window (nothing to undo)
                old = counts[pos]
                new = old + delta
                if new < 0:
                    new = 0
                counts[pos] = new
                self.totals[i] += new - old
        if res.epoch == self.epoch:
            req, tok = self.learned
            if req is not None and requests and now < req.reset_at:
                req = quota._Learned(req.limit, req.remaining - requests, req.reset_at)
            if tok is not None and tokens and now < tok.reset_at:
                tok = quota._Learned(tok.limit, tok.remaining - tokens, tok.reset_at)
            self.learned = (req, tok)
        if signal is not None and not signal.empty:
            self.learned, self.blocked_until = quota._learn(self.learned, self.blocked_until, signal, now)
            self.epoch += 1
