"""Events: one typed class per kind, one JSON encoding, one rendering of time, typed observers for metrics."""

from __future__ import annotations

import json
import re
import typing
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest

from apikeyrouter.domain.budget import BudgetOverrun, BudgetSoftExceeded, HoldExpired
from apikeyrouter.domain.circuit import (
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    ProbeAdmitted,
    ProbeReleased,
    ProbeTimedOut,
)
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.lifecycle import Cause, KeyState, Transition
from apikeyrouter.observe import (
    EVENT_TYPES,
    KINDS,
    BudgetHoldExpired,
    BudgetOverran,
    BudgetSoftExceededEvent,
    ConfigReloaded,
    Event,
    EventBus,
    KeyBreakerChanged,
    KeyRegistered,
    KeyTransitioned,
    ProviderHealthChanged,
    RequestAttempted,
    SubscriberLagged,
    SupervisorChildCrashed,
    SupervisorChildRestarted,
    SupervisorEscalated,
    event_json,
    render_wall,
)
from apikeyrouter.proxy import ProxyApp
from apikeyrouter.secret import Secret
from tests.proxy_fakes import FakeRouter
from tests.routing_env import chat, routing_env

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
T = 1000.25
WALL = 1796157477.123 - T  # trio time T is 2026-12-01T20:37:57.123Z on the wall

ONE_OF_EACH: list[Event] = [
    KeyRegistered("k1", "openai", T),
    KeyTransitioned("k1", Transition(KeyState.ACTIVE, KeyState.THROTTLED, "429", T, Cause.FAILURE, until=T + 30)),
    KeyTransitioned("k1", Transition(KeyState.THROTTLED, KeyState.ACTIVE, "throttle ended", T, Cause.CLOCK)),
    KeyBreakerChanged("k1", BreakerOpened(T, T + 30, "5 consecutive failures")),
    KeyBreakerChanged("k1", BreakerHalfOpened(T)),
    KeyBreakerChanged("k1", ProbeAdmitted(T, 3, T + 30)),
    KeyBreakerChanged("k1", ProbeReleased(T, 3)),
    KeyBreakerChanged("k1", ProbeTimedOut(T, 3)),
    KeyBreakerChanged("k1", BreakerClosed(T)),
    RequestAttempted("req-1", "k1", "openai", 2, "dec-1", FailureClass.SERVER_ERROR, 0.0421, T),
    RequestAttempted("req-1", "k2", "openai", 3, "dec-2", None, 0.5, T),
    ProviderHealthChanged("openai", True, "6 server-side failures across 3 keys in 30s, no success", T),
    SupervisorChildCrashed("keys", "key:k1", "RuntimeError: boom", 1, T),
    SupervisorChildRestarted("keys", "key:k1", 1, T),
    SupervisorEscalated("keys", "key:k1", 10, T),
    ConfigReloaded(T, keys_added=["k3"], providers_changed=["openai"], refused=["k4: revoked"]),
    BudgetHoldExpired(HoldExpired("req-2:3", ("global", "key:k1"), Decimal("0.0040"), T)),
    BudgetOverran(BudgetOverrun("req-1:1", "monthly", Decimal("0.0012"), T)),
    BudgetSoftExceededEvent(
        BudgetSoftExceeded("req-3:1", "team:search", Decimal("1"), Decimal("0.99"), Decimal("0"), Decimal("0.02"), T),
        client="acme",
    ),
]

# Fields whose JSON name differs from the attribute (the names subscribers have always seen).
RENAMED = {"from_state": "from", "to_state": "to", "failure": "outcome", "latency_s": "latency_ms"}
TIMES = {"at", "until", "deadline"}


def _leaves(obj: Any) -> dict[str, Any]:
    """An event's fields, with the domain event it wraps (transition, breaker change, overrun) flattened."""
    out: dict[str, Any] = {}
    for f in attrs.fields(type(obj)):
        value = getattr(obj, f.name)
        out.update(_leaves(value) if attrs.has(type(value)) else {f.name: value})
    return out


def test_the_samples_cover_every_event_class_and_kinds_are_todays_names() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_TYPES)
    assert {
        "key.registered", "key.transition", "key.breaker", "request.attempt", "provider.health",
        "supervisor.child_crashed", "supervisor.child_restarted", "supervisor.escalated",
        "config.reloaded", "budget.overrun", "budget.hold_expired", "budget.soft_exceeded",
    } == KINDS  # fmt: skip


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: f"{type(e).__name__}")
def test_every_event_encodes_every_field_with_times_in_iso_8601(event: Event) -> None:
    shown = event_json(event, WALL)
    json.dumps(shown, allow_nan=False)  # JSON-ready as is
    assert shown["kind"] == event.kind
    assert (shown["at"], shown["at_wall"]) == (T, "2026-12-01T20:37:57.123Z")
    for name, value in _leaves(event).items():
        assert RENAMED.get(name, name) in shown, name
        if name in TIMES:
            assert shown[name] == value
            wall = shown[f"{name}_wall"]
            assert wall is None if value is None else ISO_MS.fullmatch(wall), (name, wall)
    if isinstance(event, KeyBreakerChanged):
        assert shown["change"] == type(event.change).__name__


def test_encoded_values_are_plain_json_values() -> None:
    transition, attempt, overrun = ONE_OF_EACH[1], ONE_OF_EACH[9], ONE_OF_EACH[-2]
    assert event_json(transition, WALL).items() >= {"from": "active", "to": "throttled", "cause": "failure"}.items()
    assert event_json(transition, WALL)["until_wall"] == "2026-12-01T20:38:27.123Z"
    assert event_json(attempt, WALL)["outcome"] == "server_error" and event_json(attempt, WALL)["latency_ms"] == 42.1
    assert event_json(ONE_OF_EACH[10], WALL)["outcome"] == "success"
    assert event_json(overrun, WALL)["over_by"] == "0.0012"
    assert event_json(ONE_OF_EACH[-4], WALL)["keys_added"] == ["k3"]
    expired = event_json(ONE_OF_EACH[-3], WALL)
    assert (expired["budgets"], expired["amount"]) == (["global", "key:k1"], "0.0040")


def _types_in(hint: Any, seen: set[Any]) -> set[Any]:
    """Every type an annotation can hold, through unions, containers and nested attrs classes."""
    if hint in seen:
        return set()
    seen.add(hint)
    found = {hint}
    for arg in typing.get_args(hint):
        found |= _types_in(arg, seen)
    if isinstance(hint, type) and attrs.has(hint):
        for sub in typing.get_type_hints(hint).values():
            found |= _types_in(sub, seen)
    return found


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_no_event_field_can_hold_a_secret(cls: type[Any]) -> None:
    held = _types_in(cls, set())
    assert Secret not in held
    assert Any not in held and object not in held  # an untyped field could carry one unseen


def _publish_one_of_each(bus: EventBus) -> None:
    for event in ONE_OF_EACH:
        bus.publish(event)


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (["key"], {"key.registered", "key.transition", "key.breaker"}),
        (["key.breaker"], {"key.breaker"}),
        (
            ["request.attempt", "budget"],
            {"request.attempt", "budget.overrun", "budget.hold_expired", "budget.soft_exceeded"},
        ),
        (
            ["supervisor", "config.reloaded"],
            {"supervisor.child_crashed", "supervisor.child_restarted", "supervisor.escalated", "config.reloaded"},
        ),
        (None, KINDS),
    ],
)
async def test_a_subscriber_receives_exactly_the_kinds_it_asked_for(
    kinds: list[str] | None, expected: set[str]
) -> None:
    bus = EventBus()
    sub = bus.subscribe(kinds)
    _publish_one_of_each(bus)
    got = sub.pending()
    assert {e.kind for e in got} == expected
    assert got == [e for e in ONE_OF_EACH if e.kind in expected]  # each once, in publishing order


async def test_subscribing_to_an_unknown_kind_is_an_error_not_an_empty_stream() -> None:
    with pytest.raises(ValueError, match=r"key\.transitions"):
        EventBus().subscribe(["key.transitions"])


async def test_a_subscriber_that_falls_behind_is_dropped_and_the_publisher_never_waits() -> None:
    bus = EventBus()
    slow = bus.subscribe(capacity=2)
    _publish_one_of_each(bus)  # no checkpoint in between: nothing could drain the queue
    assert bus.published == len(ONE_OF_EACH) and bus.subscriber_count == 0 and bus.dropped_subscribers == 1
    received = []
    with pytest.raises(SubscriberLagged):
        async for event in slow:
            received.append(event)
    assert received == ONE_OF_EACH[:2]


async def test_an_observer_is_called_inline_for_its_type_only_and_can_stop() -> None:
    bus = EventBus()
    seen: list[RequestAttempted] = []
    stop = bus.observe(RequestAttempted, seen.append)
    _publish_one_of_each(bus)
    assert seen == [e for e in ONE_OF_EACH if isinstance(e, RequestAttempted)]  # before any checkpoint
    stop()
    _publish_one_of_each(bus)
    assert len(seen) == 2


async def test_a_failing_observer_never_fails_the_publisher() -> None:
    bus = EventBus()

    def broken(_: KeyRegistered) -> None:
        raise RuntimeError("observer bug")

    bus.observe(KeyRegistered, broken)
    sub = bus.subscribe(["key.registered"])
    bus.publish(ONE_OF_EACH[0])
    assert bus.observer_errors == 1 and sub.pending() == [ONE_OF_EACH[0]]


async def test_proxy_metrics_count_failed_attempts_through_the_typed_observer() -> None:
    router = FakeRouter()  # a RouterAPI without any `attempt_observers` list: only its bus
    app = ProxyApp(router, log_requests=False)
    for event in ONE_OF_EACH:
        router.events.publish(event)
    router.events.publish(RequestAttempted("req-2", "k1", "openai", 1, "dec-3", FailureClass.SERVER_ERROR, 0.1, T))
    router.events.publish(RequestAttempted("req-2", "k2", "openai", 2, "dec-3", FailureClass.TIMEOUT, 0.1, T))
    scrape = app.metrics.render().decode()
    assert 'apikeyrouter_attempt_failures_total{failure_class="server_error",key="k1"} 2.0' in scrape
    assert 'apikeyrouter_attempt_failures_total{failure_class="timeout",key="k2"} 1.0' in scrape
    counted = [line for line in scrape.splitlines() if line.startswith("apikeyrouter_attempt_failures_total{")]
    assert len(counted) == 2  # the successful attempt counted no failure


async def test_keys_transitions_decisions_and_events_show_the_same_wall_time() -> None:
    async with routing_env(
        [("tight", "sk-sim-tight", {"metadata": {"quality": "premium"}}), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-tight", "rpm": 1}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        sub = env.router.events.subscribe(["key.transition"])
        async with httpx.AsyncClient() as client:  # spend tight's quota behind the router's back
            await client.post(
                f"{env.base_url}/chat/completions", headers={"authorization": "Bearer sk-sim-tight"}, json=chat("x")
            )
        await env.router.route(chat("one"))  # tight answers 429 -> throttled
        [event] = [e for e in sub.pending() if isinstance(e, KeyTransitioned) and e.key == "tight"]
        offset = env.router.events.wall_offset
        shown = event_json(event, offset)
        entry = env.router.key("tight")
        assert entry is not None and entry["lifecycle"] == "throttled"
        [audited] = env.router.transitions("tight", 1)
        assert event.transition.until is not None
        until_wall = render_wall(event.transition.until, offset)
        assert ISO_MS.fullmatch(until_wall)
        assert shown["until_wall"] == entry["lifecycle_until_wall"] == audited["until_wall"] == until_wall
        assert {k: v for k, v in shown.items() if k != "kind"} == audited  # one encoding for both
        [decision] = env.router.decisions(1)
        assert decision["at_wall"] == render_wall(decision["at"], offset)
