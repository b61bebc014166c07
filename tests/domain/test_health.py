"""Provider health: scenarios with exact times, and the slotted counters against a scan of every call."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain import health
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.health import (
    SERVER_SIDE,
    HealthConfig,
    HealthEvent,
    ProviderDegraded,
    ProviderHealth,
    ProviderRecovered,
)

CFG = HealthConfig()  # 30 s window in 10 slots of 3 s; 3 failures across 2 keys
E500, TIMEOUT, OVERLOADED = FailureClass.SERVER_ERROR, FailureClass.TIMEOUT, FailureClass.OVERLOADED
REASON = "3 server-side failures across at least 2 keys in the last 30s, no success"


def _calls(
    h: ProviderHealth, calls: list[tuple[float, str, FailureClass | None]], cfg: HealthConfig = CFG
) -> tuple[ProviderHealth, list[HealthEvent]]:
    events: list[HealthEvent] = []
    for now, key, failure in calls:
        h, more = health.on_call(h, cfg, key, failure, now)
        events += more
    return h, events


def test_two_keys_failing_with_no_success_degrade_the_provider_until_a_success() -> None:
    h, events = _calls(ProviderHealth(), [(1.0, "a", E500), (2.0, "b", TIMEOUT)])
    assert (h.degraded, events) == (False, [])
    h, events = health.on_call(h, CFG, "a", OVERLOADED, 3.0)
    assert events == [ProviderDegraded(at=3.0, reason=REASON, failures=3)]
    assert (h.degraded, h.reason, h.since) == (True, REASON, 3.0)
    h, events = health.on_call(h, CFG, "b", E500, 4.0)
    assert h.degraded and events == []  # still degraded: nothing new to say
    h, events = health.on_call(h, CFG, "c", None, 5.0)
    assert events == [ProviderRecovered(at=5.0)]
    assert (h.degraded, h.reason, h.since) == (False, "", 5.0)


def test_one_key_failing_alone_is_the_keys_problem_not_the_providers() -> None:
    h, events = _calls(ProviderHealth(), [(float(t), "a", E500) for t in range(10)])
    assert (h.degraded, h.failures, events) == (False, 10, [])


def test_rate_limits_and_caller_faults_neither_count_nor_reset() -> None:
    h, events = _calls(
        ProviderHealth(),
        [
            (1.0, "a", E500),
            (2.0, "b", FailureClass.RATE_LIMITED),
            (3.0, "b", FailureClass.BAD_REQUEST),
            (4.0, "b", FailureClass.AUTH_INVALID),
            (5.0, "b", FailureClass.CONNECTION),
        ],
    )
    assert (h.degraded, h.failures, h.successes, events) == (False, 2, 0, [])
    h, events = health.on_call(h, CFG, "a", TIMEOUT, 6.0)
    assert [type(e) for e in events] == [ProviderDegraded]


def test_a_success_in_the_window_prevents_degradation_until_it_leaves() -> None:
    h, events = _calls(ProviderHealth(), [(1.0, "a", None), (5.0, "a", E500), (6.0, "b", E500), (7.0, "a", E500)])
    assert (h.degraded, events) == (False, [])
    # The success (slot 0, [0, 3)) counts until 33.0, a slot width after the 30 s window.
    h, events = health.on_call(h, CFG, "b", E500, 32.5)
    assert events == []
    h, events = health.effective(h, CFG, 33.0)
    assert events == [ProviderDegraded(at=33.0, reason=REASON.replace("3 server", "4 server"), failures=4)]


def test_failures_leaving_the_window_recover_the_provider_when_next_judged() -> None:
    h, _ = _calls(ProviderHealth(), [(1.0, "a", E500), (2.0, "b", E500), (3.0, "a", E500)])
    assert h.degraded
    # At 32.0 the failure at 1.0 is older than 30 s, but its slot [0, 3) is counted until 33.0.
    h, events = health.effective(h, CFG, 32.0)
    assert (h.degraded, events) == (True, [])
    h, events = health.on_call(h, CFG, "a", E500, 33.0)  # slot [0, 3) leaves: 2 failures remain
    assert events == [ProviderRecovered(at=33.0)]
    assert (h.failures, len(h.slots)) == (2, 2)


def test_state_stays_small_whatever_the_traffic() -> None:
    cfg = HealthConfig(min_keys=3)
    h = ProviderHealth()
    for i in range(5_000):
        h, _ = health.on_call(h, cfg, f"k{i % 50}", E500, i * 0.01)
    assert len(h.slots) <= cfg.buckets + 1
    assert all(len(s.keys) <= 3 for s in h.slots)
    assert h.degraded and h.failures == sum(s.failures for s in h.slots) == 3_200  # the calls from slot 6 (18.0) on


# -- the reference model: a scan of every call ----------------------------------------------------

_FAILURES = [None, None, E500, TIMEOUT, OVERLOADED, FailureClass.CONNECTION, FailureClass.RATE_LIMITED]
_CONFIGS = [
    CFG,
    HealthConfig(window_s=8.0, min_failures=2, min_keys=3, buckets=4),
    HealthConfig(window_s=5.0, min_failures=1, min_keys=1, buckets=1),
]


def _scan(calls: list[tuple[float, str, FailureClass | None]], cfg: HealthConfig, counted: list[float]) -> bool:
    window = [(k, f) for t, k, f in calls if t in counted]
    server = [k for k, f in window if f in SERVER_SIDE]
    successes = sum(1 for _, f in window if f is None)
    return successes == 0 and len(server) >= cfg.min_failures and len(set(server)) >= cfg.min_keys


@settings(max_examples=300, deadline=None)
@given(
    cfg=st.sampled_from(_CONFIGS),
    steps=st.lists(
        st.tuples(st.sampled_from([0, 1, 1, 2, 3, 5, 12, 40]), st.sampled_from("abcd"), st.sampled_from(_FAILURES)),
        max_size=60,
    ),
)
def test_slotted_counters_agree_with_a_scan_of_every_call(
    cfg: HealthConfig, steps: list[tuple[int, str, FailureClass | None]]
) -> None:
    h, now, calls = ProviderHealth(), 0.0, []
    degraded = False
    width = cfg.slot_s
    for half_seconds, key, failure in steps:
        now += half_seconds / 2  # multiples of 0.5 s: exact in floats, never ambiguous at a slot edge
        calls.append((now, key, failure))
        h, events = health.on_call(h, cfg, key, failure, now)
        # The documented window: the slots from floor(now / width) - buckets on.
        first = math.floor(now / width) - cfg.buckets
        slotted = [t for t, _, _ in calls if math.floor(t / width) >= first]
        assert h.degraded == _scan(calls, cfg, slotted)
        # Where no call is in the band (window_s, window_s + width) of ages, that is the exact window.
        if not any(cfg.window_s < now - t < cfg.window_s + width for t, _, _ in calls):
            assert h.degraded == _scan(calls, cfg, [t for t, _, _ in calls if now - t <= cfg.window_s])
        # One event exactly when the verdict changes, dated now.
        expected: list[HealthEvent] = []
        if h.degraded != degraded:
            expected = [ProviderDegraded(now, h.reason, h.failures) if h.degraded else ProviderRecovered(now)]
        assert events == expected
        degraded = h.degraded
        assert len(h.slots) <= cfg.buckets + 1
        assert (h.successes, h.failures) == (sum(s.successes for s in h.slots), sum(s.failures for s in h.slots))
