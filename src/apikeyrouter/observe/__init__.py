"""Observing a running router: typed events, the bus that delivers them, metrics and logs.

Modules:
    events   the closed union `Event` (one frozen class per kind), `event_json`, `render_wall`
    bus      `EventBus`: bounded subscribers (dropped when slow) and inline typed observers
    metrics  Prometheus metrics, fed by the `RequestAttempted` observer and scrape-time key state
    logs     structlog configuration for the standalone process
"""

from apikeyrouter.observe.bus import EventBus, Subscriber, SubscriberLagged
from apikeyrouter.observe.events import (
    EVENT_TYPES,
    KINDS,
    BudgetHoldExpired,
    BudgetOverran,
    BudgetSoftExceededEvent,
    ConfigReloaded,
    Event,
    KeyBreakerChanged,
    KeyRegistered,
    KeyTransitioned,
    ProviderHealthChanged,
    RequestAttempted,
    SupervisorChildCrashed,
    SupervisorChildRestarted,
    SupervisorEscalated,
    event_json,
    render_wall,
    unknown_kinds,
)

__all__ = [
    "EVENT_TYPES",
    "KINDS",
    "BudgetHoldExpired",
    "BudgetOverran",
    "BudgetSoftExceededEvent",
    "ConfigReloaded",
    "Event",
    "EventBus",
    "KeyBreakerChanged",
    "KeyRegistered",
    "KeyTransitioned",
    "ProviderHealthChanged",
    "RequestAttempted",
    "Subscriber",
    "SubscriberLagged",
    "SupervisorChildCrashed",
    "SupervisorChildRestarted",
    "SupervisorEscalated",
    "event_json",
    "render_wall",
    "unknown_kinds",
]
