"""Sliding-window rate limits for the simulator: pure arithmetic on an explicit `now`.

A window remembers what was admitted in the last `period` seconds. Two answers matter to a client:
- `wait(amount, now)`: how long until `amount` more would fit (the honest `Retry-After`);
- `full_reset(now)`: how long until the window is empty again, which is what OpenAI documents its
  `x-ratelimit-reset-*` headers to mean ("until the rate limit resets to its initial state").
"""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    __slots__ = ("_entries", "_used", "limit", "period")

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._entries: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.period
        entries = self._entries
        while entries and entries[0][0] <= horizon:
            self._used -= entries.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self._used

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.used(now))

    def fits(self, amount: int, now: float) -> bool:
        return self.used(now) + amount <= self.limit

    def wait(self, amount: int, now: float) -> float | None:
        """Seconds until `amount` fits; 0 if it fits now; None if it never can (amount > limit)."""
        if amount > self.limit:
            return None
        self._expire(now)
        excess = self._used + amount - self.limit
        if excess <= 0:
            return 0.0
        freed = 0
        for at, size in self._entries:
            freed += size
            if freed >= excess:
                return max(0.0, at + self.period - now)
        return self.period  # unreachable while the bookkeeping is right; the safe answer anyway

    def full_reset(self, now: float) -> float:
        self._expire(now)
        if not self._entries:
            return 0.0
        return max(0.0, self._entries[-1][0] + self.period - now)

    def add(self, amount: int, now: float) -> None:
        self._expire(now)
        if amount > 0:
            self._entries.append((now, amount))
            self._used += amount
