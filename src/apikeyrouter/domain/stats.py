"""Rolling per-key statistics: success rate and latency as time-aware EWMAs, plus plain counts.

Decay is time-aware with a floor: a sample arriving `dt` seconds after the previous one gets weight

    alpha = max(min_alpha, 1 - exp(-dt / tau))

so after a long quiet spell the next sample dominates (the old average describes a key that may have
changed), while a burst of samples at the same instant still moves the average by at least
`min_alpha` each (100 samples at once with min_alpha=0.02 carry ~87% of the weight). The very first
sample sets the average outright.

`success_ewma` starts at 1.0: an unknown key is presumed healthy so a new key gets traffic and
earns its real figure. `latency_ewma_s` is None until the first *successful* call: failure latencies
(timeouts, instant connection refusals) say nothing about how fast the key serves.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["Stats", "StatsConfig", "record"]


@attrs.frozen
class StatsConfig:
    tau_s: float = attrs.field(default=120.0, validator=attrs.validators.gt(0.0))
    min_alpha: float = attrs.field(default=0.05, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)])

    def alpha(self, last_at: float | None, now: float) -> float:
        if last_at is None:
            return 1.0
        dt = max(0.0, now - last_at)
        return max(self.min_alpha, 1.0 - math.exp(-dt / self.tau_s))


@attrs.frozen
class Stats:
    success_ewma: float = 1.0
    latency_ewma_s: float | None = None
    requests: int = 0
    successes: int = 0
    failures: int = 0
    last_at: float | None = None

    @property
    def success_rate(self) -> float:
        """Lifetime success ratio (1.0 before any request)."""
        return self.successes / self.requests if self.requests else 1.0


def record(stats: Stats, cfg: StatsConfig, *, success: bool, latency_s: float | None, now: float) -> Stats:
    """Fold one finished call in. `latency_s` is used only when `success` (see the module docstring)."""
    alpha = cfg.alpha(stats.last_at, now)
    success_ewma = stats.success_ewma + alpha * ((1.0 if success else 0.0) - stats.success_ewma)
    latency = stats.latency_ewma_s
    if success and latency_s is not None:
        if latency_s < 0:
            raise ValueError(f"latency must be >= 0, got {latency_s}")
        latency = latency_s if latency is None else latency + alpha * (latency_s - latency)
    last = stats.last_at
    return Stats(  # positional, in field order: once per settled request
        success_ewma,  # success_ewma
        latency,  # latency_ewma_s
        stats.requests + 1,  # requests
        stats.successes + (1 if success else 0),  # successes
        stats.failures + (0 if success else 1),  # failures
        now if last is None or now > last else last,  # last_at: max(last, now)
    )
