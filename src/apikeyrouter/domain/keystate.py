"""A key's state as values: `KeySettings` (what a key actor is configured with), `KeyRecord` (what it
stores, so a restart restores it) and `KeySnapshot` (what it publishes on the board for the router, the
views and the debug channel). Frozen, computed lazily where a figure costs something."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal

import attrs

from apikeyrouter.domain import circuit, quota
from apikeyrouter.domain.circuit import Breaker, BreakerConfig, BreakerState
from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureAction, FailureClass
from apikeyrouter.domain.lifecycle import Lifecycle
from apikeyrouter.domain.quota import Capacity, Prediction, Quota, QuotaConfig
from apikeyrouter.domain.stats import Stats, StatsConfig

__all__ = ["KeyRecord", "KeySettings", "KeySnapshot"]


@attrs.frozen
class KeySettings:
    id: str
    provider: str
    models: frozenset[str] = frozenset()  # empty: whatever the provider serves
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    quota: QuotaConfig = attrs.field(factory=QuotaConfig)
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    stats: StatsConfig = attrs.field(factory=StatsConfig)
    max_in_flight: int | None = None
    budget: Decimal | None = None  # shown in snapshots; enforced per calendar month by the BudgetActor
    failures: Mapping[FailureClass, FailureAction] = attrs.field(factory=lambda: dict(DEFAULT_ACTIONS))
    default_throttle_s: float = 30.0  # a 429 without Retry-After or reset headers benches this long
    exhausted_cooldown_s: float = 3600.0  # quota gone with no window reset known


@attrs.frozen
class KeyRecord:
    """The durable part of a key's state: what a restart restores. It names the key material by its
    fingerprint only (a record may be written to disk); the material itself comes back from the config
    or the admin API."""

    lifecycle: Lifecycle
    quota: Quota
    breaker: Breaker
    stats: Stats
    spend: Decimal
    fingerprint: str


@attrs.frozen
class KeySnapshot:
    """What the router scores and the debug channel shows. Never holds key material."""

    id: str
    provider: str
    fingerprint: str
    models: frozenset[str]
    metadata: Mapping[str, str]
    lifecycle: Lifecycle
    breaker: Breaker
    stats: Stats
    in_flight: int
    max_in_flight: int | None
    spend: Decimal
    reserved_cost: Decimal
    budget: Decimal | None
    at: float
    quota: Quota
    breaker_config: BreakerConfig
    retry_after_s: float | None = None  # the provider's Retry-After behind the current throttle
    restarts: int = 0

    # The quota figures are computed when first read (once per snapshot), not on every publish: a
    # key publishes on each reservation and settlement, and most snapshots are never read whole. Kept
    # in a plain slot, not a `cached_property`: on a slotted class that one's first read goes through
    # `__getattr__` after a failed slot lookup, which cost twice the assessment's own overhead, and the
    # router reads it once per re-indexed snapshot. `attrs.evolve` makes a snapshot with an empty slot.
    _assessed: tuple[Capacity, Prediction] | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def assessed(self) -> tuple[Capacity, Prediction]:
        """`quota.assess(self.quota, self.at)`, computed on the first call."""
        figures = self._assessed
        if figures is None:
            figures = quota.assess(self.quota, self.at)
            object.__setattr__(self, "_assessed", figures)  # a cache of a pure function of frozen fields
        return figures

    @property
    def capacity(self) -> Capacity:
        return self.assessed()[0]

    @property
    def prediction(self) -> Prediction:
        return self.assessed()[1]

    @functools.cached_property
    def usage(self) -> Mapping[str, tuple[int, int | None]]:
        return quota.usage(self.quota, self.at)

    def available_at(self, now: float) -> float | None:
        """When this key may next take a request (now if it can), None if only an operator can help."""
        when = self.lifecycle.available_at(now)
        if when is None:
            return None
        b, _ = circuit.effective(self.breaker, self.breaker_config, now)
        if b.state is BreakerState.OPEN and b.open_until is not None:
            when = max(when, b.open_until)
        q_at = quota.available_at(self.quota, 1, now)
        if q_at is None:
            return None
        return max(when, q_at)
