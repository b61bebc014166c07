"""What an instance admits on its own while Redis is away: its share (`limit // live instances`) of each
key's windows and in-flight slots and of each client's and team's rpm/tpm, and what it admitted, for the
replay into Redis when it is back (redis_shared.py). Also the values the request path and the shared side
exchange (`SharedAsk`, `SharedGrant`)."""

from __future__ import annotations

import collections
from decimal import Decimal

import attrs
import trio

from apikeyrouter.domain import quota, rates
from apikeyrouter.domain.budget import BudgetSpec
from apikeyrouter.domain.quota import QuotaConfig, QuotaReservation
from apikeyrouter.domain.rates import RateLimit, Rates
from apikeyrouter.domain.refusal import Refusal, RefusalKind

__all__ = ["KeyLimits", "LocalShares", "SharedAsk", "SharedGrant"]

_REPLAY_MAX = 10_000  # admissions kept per key for the replay (beyond: the oldest are not replayed)


@attrs.frozen
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    rpd: int | None = None
    tokens_per_month: int | None = None


@attrs.frozen
class SharedAsk:
    key_id: str
    request_id: str
    tokens: int
    limits: KeyLimits
    lease_s: float
    worst_case: Decimal
    budgets: tuple[BudgetSpec, ...] = ()
    scopes: tuple[RateLimit, ...] = ()  # the client's and team's rpm/tpm, shared like the key's windows


@attrs.define(eq=False)
class SharedGrant:
    """What one attempt holds on the shared side. `local` set: held on this instance's fallback share."""

    key_id: str
    rid: str
    tokens: int
    budgets: tuple[BudgetSpec, ...]
    local: QuotaReservation | None = None
    at_ms: int = -1  # when Redis reserved it, on Redis's clock (-1: unknown); settles its day/month bucket
    scopes: tuple[str, ...] = ()  # the client and team windows it took an entry in


@attrs.define
class _Share:
    """One key's fallback share while Redis is away."""

    quota: quota.Quota
    in_flight: int = 0
    # (trio time, tokens) of what this share admitted, for the replay into Redis (the last minute only).
    admitted: collections.deque[tuple[float, int]] = attrs.Factory(lambda: collections.deque(maxlen=_REPLAY_MAX))


class LocalShares:
    def __init__(self) -> None:
        self.keys: dict[str, _Share] = {}
        # Clients' and teams' windows while Redis is away (limits: their shares), and what they admitted.
        self.scope_share = Rates()
        self.scope_admitted: collections.deque[tuple[float, str, int]] = collections.deque(maxlen=_REPLAY_MAX)
        self.grants = 0
        # (trio time, tokens) of what this instance admitted for each key in the last minute, through Redis
        # or on its share: a share built when Redis goes away starts with them, so the instance's own
        # admissions of the current minute count against its share (not only those made after).
        self.recent: dict[str, collections.deque[tuple[float, int]]] = {}
        self._stale: set[str] = set()  # keys admitted through Redis since their share was built

    def note(self, key_id: str, tokens: int, limits: KeyLimits) -> None:
        """An admission through Redis (of a key with an rpm or tpm): remembered for a minute."""
        if limits.rpm is None and limits.tpm is None:
            return
        self._remember(key_id, tokens, trio.current_time())
        self._stale.add(key_id)

    def _remember(self, key_id: str, tokens: int, now: float) -> None:
        log = self.recent.get(key_id)
        if log is None:
            log = self.recent[key_id] = collections.deque(maxlen=_REPLAY_MAX)
        while log and now - log[0][0] >= 60.0:
            log.popleft()
        log.append((now, tokens))

    def _seeded(self, key_id: str, cfg: QuotaConfig, now: float) -> quota.Quota:
        """A share's quota holding this instance's admissions of the last minute (at their estimates)."""
        entries = [(at, tokens) for at, tokens in self.recent.get(key_id, ()) if now - at < 60.0]
        q = quota.new_quota(cfg, entries[0][0] if entries else now)
        for at, tokens in entries:
            q, _ = quota.take(q, tokens, at)
        return q

    def pending(self) -> int:
        """Admissions not yet replayed into Redis."""
        return sum(len(s.admitted) for s in self.keys.values()) + len(self.scope_admitted)

    def grant(self, ask: SharedAsk, rid: str, live: int) -> SharedGrant | Refusal:
        """Take the request on this instance's share of each limit (`limit // live`), or say which is full."""
        now = trio.current_time()
        lim = ask.limits
        cfg = QuotaConfig(
            rpm=_part(lim.rpm, live),
            tpm=_part(lim.tpm, live),
            rpd=_part(lim.rpd, live),
            tokens_per_month=_part(lim.tokens_per_month, live),
        )
        share = self.keys.get(ask.key_id)
        if share is None:
            share = self.keys[ask.key_id] = _Share(self._seeded(ask.key_id, cfg, now))
            self._stale.discard(ask.key_id)
        elif ask.key_id in self._stale:  # Redis went away again: this minute's admissions since count too
            share.quota = self._seeded(ask.key_id, cfg, now)
            self._stale.discard(ask.key_id)
        elif share.quota.config != cfg:  # the live count changed: same windows, new limits
            share.quota = attrs.evolve(share.quota, config=cfg)
        flight = _part(lim.max_in_flight, live)
        if flight is not None and share.in_flight >= flight:
            return Refusal(ask.key_id, RefusalKind.IN_FLIGHT, busy=True, detail={"limit": flight})
        scoped = self._scopes(ask, rid, live, now)
        if isinstance(scoped, Refusal):
            return scoped
        q, got = quota.reserve(share.quota, ask.tokens, now)
        if not isinstance(got, QuotaReservation):
            why = f"{got.reason} (local share 1/{live}: redis unavailable)"
            return Refusal(ask.key_id, RefusalKind.QUOTA, got.retry_at, detail={"window": got.window, "reason": why})
        share.quota = q
        share.in_flight += 1
        share.admitted.append((now, ask.tokens))
        if lim.rpm is not None or lim.tpm is not None:
            self._remember(ask.key_id, ask.tokens, now)
        self.scope_share = scoped
        self.scope_admitted.extend((now, rl.scope, ask.tokens) for rl in ask.scopes)
        self.grants += 1
        scopes = tuple(rl.scope for rl in ask.scopes)
        return SharedGrant(ask.key_id, rid, ask.tokens, (), local=got, scopes=scopes)

    def _scopes(self, ask: SharedAsk, rid: str, live: int, now: float) -> Rates | Refusal:
        """The client's and team's windows on this instance's share (`limit // live`), checked, not kept."""
        if not ask.scopes:
            return self.scope_share
        limits: dict[str, RateLimit] = {}
        for rl in ask.scopes:
            rpm, tpm = _part(rl.rpm, live), _part(rl.tpm, live)
            if rpm == 0 or tpm == 0:  # less than one request (or token) each: this instance admits none
                window = "rpm" if rpm == 0 else "tpm"
                why = f"{window} local share 0 (1/{live} of the limit: redis unavailable)"
                detail = {"window": f"{rl.scope} {window}", "reason": why, "scope": rl.scope}
                return Refusal(ask.key_id, RefusalKind.QUOTA, None, detail=detail)
            limits[rl.scope] = RateLimit(rl.scope, rpm, tpm)
        share = self.scope_share
        if any(share.limits.get(scope) != lim for scope, lim in limits.items()):  # new live count or limits
            share = attrs.evolve(share, limits={**share.limits, **limits})
        admitted, limited = rates.admit(share, rid, limits, ask.tokens, now)
        if limited is not None:
            why = f"{limited.message.split(': ', 1)[1]} (local share 1/{live}: redis unavailable)"
            detail = {"window": f"{limited.scope} {limited.window}", "reason": why, "scope": limited.scope}
            return Refusal(ask.key_id, RefusalKind.QUOTA, limited.retry_at, detail=detail)
        return admitted

    def finish(self, grant: SharedGrant, tokens: int | None, *, charged: bool = True) -> None:
        """Settle (`tokens`) or release (None). `charged` False: the attempt failed upstream and its budget
        hold was freed: its client and team entries go (as the budget actor's own windows free them)."""
        if grant.scopes:
            self.scope_share = (
                rates.release(self.scope_share, grant.rid)
                if tokens is None or not charged
                else rates.settle(self.scope_share, grant.rid, tokens)
            )
        share = self.keys.get(grant.key_id)
        if share is None or grant.local is None:
            return
        now = trio.current_time()
        share.in_flight = max(0, share.in_flight - 1)
        if tokens is None:
            share.quota = quota.release(share.quota, grant.local, now)
        else:
            share.quota = quota.settle(share.quota, grant.local, tokens, now)


def _part(limit: int | None, live: int) -> int | None:
    return None if limit is None else limit // live
