"""Requests and tokens per minute for clients and teams: exact sliding windows.

A scope ("client:acme", "team:search") may have an `rpm` and a `tpm`. Each request that is admitted
takes an entry in the window of every scope that applies: one request, and its worst-case tokens
(input + max_tokens). The check and the entry are one pure step, applied one at a time by the owner
(the budget actor), so no number of concurrent requests admits more than `rpm` in any 60 seconds:

    admit(rates, entry_id, scopes, tokens, now)   refused if, for any scope, the entries of the
                                                  last 60 s plus this one exceed rpm or tpm
    settle(rates, entry_id, tokens)               the entry stays (the request was sent) with its
                                                  actual tokens
    release(rates, entry_id)                      the entry goes (nothing was sent upstream)

The window slides: an entry counts for exactly 60 seconds from its admission (entries older than that
are pruned lazily when the scope is next touched). A refusal says when the window next has room
(`retry_at`). Scopes without limits are skipped; settling or releasing an unknown id changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

__all__ = [
    "WINDOW_S",
    "RateLimit",
    "RateRefused",
    "Rates",
    "admit",
    "new_rates",
    "release",
    "restored",
    "set_limits",
    "settle",
    "usage",
]

WINDOW_S = 60.0


@attrs.frozen
class RateLimit:
    scope: str
    rpm: int | None = None
    tpm: int | None = None

    def __attrs_post_init__(self) -> None:
        for name, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{self.scope}: {name} must be >= 1, got {value}")


@attrs.frozen
class _Entry:
    at: float
    tokens: int


@attrs.frozen
class Rates:
    limits: Mapping[str, RateLimit] = attrs.field(factory=dict)
    # scope -> entry id -> entry, in admission order (dicts keep insertion order)
    windows: Mapping[str, Mapping[str, _Entry]] = attrs.field(factory=dict)


@attrs.frozen
class RateRefused:
    scope: str
    window: str  # "rpm" or "tpm"
    limit: int
    used: int
    requested: int
    retry_at: float | None  # when enough of the window has slid by (None: never, the request is too big)
    at: float

    @property
    def message(self) -> str:
        return f"{self.scope}: {self.window} limit {self.limit} reached ({self.used} used, {self.requested} more asked)"


def new_rates(limits: Iterable[RateLimit]) -> Rates:
    return Rates(limits={lim.scope: lim for lim in limits if lim.rpm is not None or lim.tpm is not None})


def _live(window: Mapping[str, _Entry], now: float) -> dict[str, _Entry]:
    cutoff = now - WINDOW_S
    return {eid: e for eid, e in window.items() if e.at > cutoff}


def usage(rates: Rates, scope: str, now: float) -> tuple[int, int]:
    """(requests, tokens) in `scope`'s window as of `now`."""
    live = _live(rates.windows.get(scope, {}), now)
    return len(live), sum(e.tokens for e in live.values())


def _tokens_free_at(live: Mapping[str, _Entry], limit: int, tokens: int) -> float | None:
    """When the oldest entries have slid out far enough for `tokens` more to fit under `limit`."""
    if tokens > limit:
        return None
    total = sum(e.tokens for e in live.values())
    for e in live.values():
        total -= e.tokens
        if total + tokens <= limit:
            return e.at + WINDOW_S
    return None


def _check(lim: RateLimit, live: Mapping[str, _Entry], tokens: int, now: float) -> RateRefused | None:
    if lim.rpm is not None and len(live) + 1 > lim.rpm:
        first = next(iter(live.values()))
        return RateRefused(lim.scope, "rpm", lim.rpm, len(live), 1, first.at + WINDOW_S, now)
    if lim.tpm is not None:
        used = sum(e.tokens for e in live.values())
        if used + tokens > lim.tpm:
            return RateRefused(lim.scope, "tpm", lim.tpm, used, tokens, _tokens_free_at(live, lim.tpm, tokens), now)
    return None


def admit(
    rates: Rates, entry_id: str, scopes: Iterable[str], tokens: int, now: float
) -> tuple[Rates, RateRefused | None]:
    """Take one request of `tokens` in every limited scope, or refuse (rates unchanged)."""
    if not rates.limits:
        return rates, None
    updated: dict[str, Mapping[str, _Entry]] = {}
    for scope in dict.fromkeys(scopes):
        lim = rates.limits.get(scope)
        if lim is None:
            continue
        live = _live(rates.windows.get(scope, {}), now)
        if entry_id in live:
            return rates, None  # admitted already: idempotent
        refused = _check(lim, live, tokens, now)
        if refused is not None:
            return rates, refused
        live[entry_id] = _Entry(now, tokens)
        updated[scope] = live
    if not updated:
        return rates, None
    return attrs.evolve(rates, windows={**rates.windows, **updated}), None


def _edit(rates: Rates, entry_id: str, tokens: int | None) -> Rates:
    updated: dict[str, Mapping[str, _Entry]] = {}
    for scope, window in rates.windows.items():
        entry = window.get(entry_id)
        if entry is None:
            continue
        if tokens is None:
            updated[scope] = {k: v for k, v in window.items() if k != entry_id}
        else:
            updated[scope] = {**window, entry_id: attrs.evolve(entry, tokens=tokens)}
    return attrs.evolve(rates, windows={**rates.windows, **updated}) if updated else rates


def settle(rates: Rates, entry_id: str, tokens: int) -> Rates:
    """The request was sent: its entry stays for the rest of its minute, with its actual tokens."""
    return _edit(rates, entry_id, max(0, tokens))


def release(rates: Rates, entry_id: str) -> Rates:
    """Nothing was sent upstream: the entry goes and its room is free again."""
    return _edit(rates, entry_id, None)


def restored(rates: Rates) -> Rates:
    """Windows read back from a store, their entry ids marked so no id of the new process can match one.
    Entries already marked (restored twice) keep their id."""
    mark = "restored/"
    windows = {
        scope: {(eid if eid.startswith(mark) else mark + eid): e for eid, e in w.items()}
        for scope, w in rates.windows.items()
    }
    return attrs.evolve(rates, windows=windows)


def set_limits(rates: Rates, limits: Iterable[RateLimit]) -> Rates:
    """New limits (a reload); windows of scopes still limited are kept."""
    fresh = new_rates(limits)
    return attrs.evolve(fresh, windows={k: v for k, v in rates.windows.items() if k in fresh.limits})
