"""KeyIndex: scenarios, and top-k equal to the full scan (`scoring.rank`) under random histories."""

from __future__ import annotations

from decimal import Decimal

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.domain.circuit import BreakerState
from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.index import ADMISSION_WINDOW, KeyIndex
from apikeyrouter.domain.lifecycle import KeyState
from apikeyrouter.domain.quota import CapacityState, Prediction
from apikeyrouter.domain.scoring import KeyView, Weights, rank

WALL = 12 * 3600 + 4 * 60 + 5 - 100.0


def test_throttled_key_is_benched_then_woken_lazily() -> None:
    index = KeyIndex(wall_offset=WALL)
    index.update(KeyView("k1", "openai", served=5, at=0.0))
    index.update(
        KeyView("k2", "openai", lifecycle=KeyState.THROTTLED, lifecycle_until=100.0, retry_after_s=30.0, at=70.0)
    )
    assert [k for k, _ in index.top("gpt", "reliability", 70.0, k=5)] == ["k1"]
    summary = index.excluded_summary("gpt", 70.0)
    assert [(e.key_id, e.reason) for e in summary.examples] == [
        ("k2", "k2: throttled until 1970-01-01T12:04:05.000Z (Retry-After 30s)")
    ]
    assert (summary.eligible, summary.excluded, summary.by_kind) == (1, 1, (("throttled", 1),))
    # k2 has served less, so once awake it ranks first on the tie.
    assert [k for k, _ in index.top("gpt", "reliability", 100.0, k=5)] == ["k2", "k1"]
    assert index.excluded_summary("gpt", 100.0).excluded == 0


def test_earliest_available_when_everything_is_benched() -> None:
    index = KeyIndex()
    index.update(KeyView("a", "p", capacity=CapacityState.EXHAUSTED, capacity_retry_at=50.0, at=0.0))
    index.update(KeyView("b", "p", breaker=BreakerState.OPEN, breaker_until=30.0, at=0.0))
    index.update(KeyView("c", "p", lifecycle=KeyState.INVALID, at=0.0))
    assert index.top("m", "cost", 10.0) == []
    assert index.earliest_available("m", 10.0) == 30.0
    assert index.earliest_available("m", 31.0) == 31.0
    index.remove("b")
    assert index.earliest_available("m", 31.0) == 50.0
    index.remove("a")
    assert index.earliest_available("m", 60.0) is None


def test_models_and_wildcard_keys() -> None:
    index = KeyIndex()
    index.update(KeyView("mini", "p", models=frozenset({"gpt-4o-mini"})))
    index.update(KeyView("any", "p"))
    assert {k for k, _ in index.top("gpt-4o-mini", "cost", 0.0)} == {"mini", "any"}
    assert [k for k, _ in index.top("claude", "cost", 0.0)] == ["any"]
    assert index.excluded_summary("claude", 0.0).not_serving == 1
    index.update(KeyView("mini", "p", models=frozenset({"claude"})))
    assert {k for k, _ in index.top("claude", "cost", 0.0)} == {"mini", "any"}
    assert [k for k, _ in index.top("gpt-4o-mini", "cost", 0.0)] == ["any"]


def _decide(index: KeyIndex, model: str, objective: str, now: float) -> list[tuple[str, float]]:
    """What `RouterActor.decide` asks the index for one request."""
    best = index.top(model, objective, now, k=3)
    index.excluded_summary(model, now, limit=5)
    if not best:
        index.earliest_available(model, now)
    return best


def test_invented_model_names_neither_grow_the_index_nor_change_real_decisions() -> None:
    # Clients choose the model string. 20 keys serve any model (priced per model), 5 declare gpt-4o-mini.
    cheap, dear = ModelPrice(Decimal("0.15"), Decimal("0.6")), ModelPrice(Decimal("3"), Decimal("15"))
    views = [KeyView(f"any{i}", "p", prices={"gpt-4o": dear if i % 2 else cheap}, served=i, at=0.0) for i in range(20)]
    views += [KeyView(f"mini{i}", "p", models=frozenset({"gpt-4o-mini"}), served=i, at=0.0) for i in range(5)]
    index = KeyIndex()
    for v in views:
        index.update(v)
    real = [("gpt-4o-mini", "reliability"), ("gpt-4o", "cost")]  # declared; served by the wildcard keys
    for model, objective in real * 2:
        _decide(index, model, objective, 1.0)
    expected = {m: _decide(index, m, o, 1.0) for m, o in real}
    before = index.stats()
    assert (before.keys, before.buckets) == (25, 2)  # gpt-4o-mini's bucket and the wildcard one

    for i in range(10_000):
        assert len(_decide(index, f"junk-{i}", "cost", 2.0)) == 3
    after = index.stats()

    # Same structure: no bucket, no sorted list, no entry more; so a decision (and a key update, which
    # re-ranks the key in `orders` lists) does the same work as before the flood.
    assert attrs.evolve(after, admissions=0) == attrs.evolve(before, admissions=0)
    assert after.admissions == ADMISSION_WINDOW
    for model, objective in real:
        assert _decide(index, model, objective, 3.0) == expected[model] == rank(views, model, objective, 3.0, 3)
    index.update(attrs.evolve(views[0], served=100, at=3.0))
    assert index.stats() == after


def test_a_bucket_lasts_as_long_as_a_key_declares_its_model() -> None:
    index = KeyIndex()
    index.update(KeyView("any", "p"))
    index.update(KeyView("m1", "p", models=frozenset({"claude"})))
    index.update(KeyView("m2", "p", models=frozenset({"claude"})))
    assert index.stats().buckets == 2
    index.remove("m1")
    assert [k for k, _ in index.top("claude", "cost", 0.0)] == ["any", "m2"]
    index.update(KeyView("m2", "p", models=frozenset({"gpt"})))
    assert index.stats().buckets == 2  # gpt replaced claude
    assert [k for k, _ in index.top("claude", "cost", 0.0)] == ["any"]
    index.remove("m2")
    assert index.stats().buckets == 1  # the wildcard bucket alone
    assert [k for k, _ in index.top("gpt", "cost", 0.0)] == ["any"]


def test_wildcard_keeps_a_sorted_list_only_for_pairs_asked_again() -> None:
    index = KeyIndex(max_wild_orders=2)
    for i in range(4):
        index.update(KeyView(f"k{i}", "p", served=i))
    assert index.top("a", "cost", 0.0, k=2) == index.top("a", "cost", 0.0, k=2)  # asked twice: now kept
    assert (index.stats().orders, index.stats().ranked, index.stats().admissions) == (1, 4, 0)
    for model in ("b", "c", "b", "c"):
        index.top(model, "cost", 0.0)
    assert index.stats().orders == 2  # at most max_wild_orders: "a", least recently used, was evicted
    assert [k for k, _ in index.top("a", "cost", 0.0, k=2)] == ["k0", "k1"]


def test_summary_is_bounded_and_shows_each_kind_first() -> None:
    index = KeyIndex()
    for i in range(300):
        index.update(KeyView(f"t{i}", "p", lifecycle=KeyState.THROTTLED, lifecycle_until=1e6))
    for i in range(20):
        index.update(KeyView(f"d{i}", "p", lifecycle=KeyState.DISABLED))
    s = index.excluded_summary("m", 0.0, limit=3)
    assert s.by_kind == (("throttled", 300), ("disabled", 20))
    reasons = [e.reason for e in s.examples]
    assert len(reasons) == 3 and reasons[0].startswith("t0: throttled") and reasons[1] == "d0: disabled"


def test_fairness_rotates_between_identical_keys_as_they_serve() -> None:
    index = KeyIndex()
    served = {"a": 0, "b": 0, "c": 0}
    for key in served:
        index.update(KeyView(key, "p"))
    picks = []
    for t in range(6):
        key = index.top("m", "fairness", float(t), k=1)[0][0]
        picks.append(key)
        served[key] += 1
        index.update(KeyView(key, "p", served=served[key], at=float(t)))
    assert picks == ["a", "b", "c", "a", "b", "c"]


# -- the reference model ------------------------------------------------------------------------

_PRICES = [None, ModelPrice(Decimal("0.15"), Decimal("0.6")), ModelPrice(Decimal("3"), Decimal("15"))]


@st.composite
def _views(draw: st.DrawFn, key_id: str, now: float) -> KeyView:
    lifecycle = draw(st.sampled_from(list(KeyState)))
    timed = lifecycle in (KeyState.THROTTLED, KeyState.EXHAUSTED)
    breaker = draw(st.sampled_from(list(BreakerState)))
    capacity = draw(st.sampled_from(list(CapacityState)))
    limit = draw(st.sampled_from([None, 2]))
    return KeyView(
        key_id,
        "p",
        models=draw(st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"b"}), frozenset({"a", "b"})])),
        default_price=draw(st.sampled_from(_PRICES)),
        lifecycle=lifecycle,
        lifecycle_until=now + draw(st.integers(1, 20)) if timed else None,
        breaker=breaker,
        breaker_until=now + draw(st.integers(-5, 20)) if breaker is not BreakerState.CLOSED else None,
        probe_in_flight=breaker is BreakerState.HALF_OPEN and draw(st.booleans()),
        in_flight=draw(st.integers(0, 2)),
        in_flight_limit=limit,
        capacity=capacity,
        capacity_left=draw(st.sampled_from([0.0, 0.3, 1.0])),
        capacity_retry_at=now + draw(st.integers(1, 20)) if capacity is CapacityState.EXHAUSTED else None,
        prediction=draw(st.sampled_from([None, Prediction(5.0, True, 0.8), Prediction(100.0, False, 0.2)])),
        success_ewma=draw(st.sampled_from([0.5, 0.9, 1.0])),
        latency_ewma_s=draw(st.sampled_from([None, 0.3, 2.0])),
        recent_requests=draw(st.sampled_from([0.0, 3.0, 30.0])),
        served=draw(st.integers(0, 3)),
        quality=draw(st.sampled_from([0.2, 0.8])),
        at=now,
    )


_OBJECTIVES: list[str | Weights] = ["reliability", "cost", "fairness", "latency", "quality", Weights(cost=1, load=3)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_top_k_equals_the_full_scan(data: st.DataObject) -> None:
    index, views, now = KeyIndex(), {}, 0.0
    ids = [f"k{i}" for i in range(10)]
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(["update", "update", "update", "remove", "query", "wait"]))
        if op == "update":
            key = data.draw(st.sampled_from(ids))
            views[key] = data.draw(_views(key, now))
            index.update(views[key])
        elif op == "remove":
            key = data.draw(st.sampled_from(ids))
            views.pop(key, None)
            index.remove(key)
        elif op == "wait":
            now += data.draw(st.integers(1, 15))
        else:
            model = data.draw(st.sampled_from(["a", "b", "c"]))
            objective = data.draw(st.sampled_from(_OBJECTIVES))
            k = data.draw(st.integers(1, 12))
            assert index.top(model, objective, now, k) == rank(views.values(), model, objective, now, k)
            assert index.stats().buckets == 1 + len({m for v in views.values() for m in v.models})
            expected_ok = len(rank(views.values(), model, "cost", now, 100))
            summary = index.excluded_summary(model, now)
            assert summary.eligible == expected_ok
            serving = sum(1 for v in views.values() if v.serves(model))
            assert summary.excluded == serving - expected_ok
            assert summary.not_serving == len(views) - serving
            if expected_ok:
                assert index.earliest_available(model, now) == now
