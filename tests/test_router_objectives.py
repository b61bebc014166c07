"""Each routing objective prefers the right key, against the simulator over 127.0.0.1 (real clock).

Ties between equal scores go to the least-served key, then the key id: the keys below are named so that
the tie-break alone would pick the *wrong* key, so each test shows the objective doing the choosing.
Nothing here asserts on timing: the slow simulator key is slower by hundreds of milliseconds.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from apikeyrouter import InvalidRequest
from apikeyrouter.domain.request import SystemResponse
from tests.routing_env import chat, routing_env, settle_down

CHEAP = {"prices": {"gpt-4o-mini": ("0.01", "0.02")}}  # per million tokens: far below the list price


def used(response: SystemResponse) -> str:
    assert response.metadata is not None
    return response.metadata.key_used


async def test_cost_picks_the_cheaper_provider() -> None:
    async with routing_env(
        [("a-list", "sk-sim-list", {"provider": "list"}), ("z-cheap", "sk-sim-cheap", {"provider": "cheap"})],
        providers={"list": {}, "cheap": CHEAP},
    ) as env:
        for i in range(3):
            response = await env.router.route(chat(f"n{i}"), objective="cost")
            assert response.metadata is not None
            assert (response.metadata.key_used, response.metadata.provider) == ("z-cheap", "cheap")
            usage = response.usage
            per_million = usage.input_tokens * Decimal("0.01") + usage.output_tokens * Decimal("0.02")
            assert response.metadata.cost == per_million / 1_000_000
        decision = response.metadata.decision
        assert [c.key_id for c in decision.candidates] == ["z-cheap", "a-list"]
        assert decision.candidates[0].score > decision.candidates[1].score
        assert decision.objective == "cost" and "cost 0.99" in decision.candidates[0].breakdown
        assert env.sim.stats("sk-sim-list").requests == 0


async def test_fairness_spreads_requests_evenly_over_identical_keys() -> None:
    keys = [(f"k{i}", f"sk-sim-{i}", {}) for i in range(4)]
    async with routing_env(keys) as env:
        spread = Counter([used(await env.router.route(chat(f"n{i}"), objective="fairness")) for i in range(12)])
        assert spread == {"k0": 3, "k1": 3, "k2": 3, "k3": 3}
        assert [env.sim.stats(f"sk-sim-{i}").requests for i in range(4)] == [3, 3, 3, 3]


async def test_reliability_avoids_a_key_once_it_has_failed() -> None:
    async with routing_env(
        [("a-flaky", "sk-sim-flaky", {}), ("b-steady", "sk-sim-steady", {})],
        sim_keys=[{"key": "sk-sim-flaky", "error_rate": 1.0, "seed": 3}],
    ) as env:
        first = await env.router.route(chat("first"), objective="reliability")
        assert first.metadata is not None
        assert (first.metadata.key_used, first.metadata.attempts) == ("b-steady", 2)  # a-flaky won the tie, failed
        for i in range(5):
            response = await env.router.route(chat(f"n{i}"), objective="reliability")
            assert response.metadata is not None
            assert (response.metadata.key_used, response.metadata.attempts) == ("b-steady", 1)
        assert env.sim.stats("sk-sim-flaky").requests == 1
        flaky = env.router.key("a-flaky")
        # Still eligible (one failure opens no breaker, benches nothing): the score alone keeps it away.
        assert flaky is not None and (flaky["lifecycle"], flaky["breaker"]) == ("active", "closed")
        assert flaky["success_rate"] < 1.0
        decision = response.metadata.decision
        assert [c.key_id for c in decision.candidates] == ["b-steady", "a-flaky"]


async def test_latency_prefers_the_faster_key_after_warm_up() -> None:
    async with routing_env(
        [("a-slow", "sk-sim-slow", {}), ("b-fast", "sk-sim-fast", {})],
        sim_keys=[{"key": "sk-sim-slow", "latency_ms": 300}],
    ) as env:
        # Unknown latency scores as middling, so warm up: fairness sends one request to each key.
        warm = [used(await env.router.route(chat(f"warm{i}"), objective="fairness")) for i in range(2)]
        assert warm == ["a-slow", "b-fast"]
        await settle_down(env.router)  # settlements are tells: let the keys take the latencies in
        for i in range(3):
            assert used(await env.router.route(chat(f"n{i}"), objective="latency")) == "b-fast"
        slow, fast = env.router.key("a-slow"), env.router.key("b-fast")
        assert slow is not None and fast is not None
        assert slow["latency_ms"] >= 300 > fast["latency_ms"]
        assert env.sim.stats("sk-sim-slow").requests == 1


async def test_quality_follows_the_quality_metadata() -> None:
    async with routing_env(
        [
            ("a-basic", "sk-sim-basic", {"metadata": {"quality": "basic"}}),
            ("b-plain", "sk-sim-plain", {}),
            ("z-premium", "sk-sim-premium", {"metadata": {"quality": "premium"}}),
        ]
    ) as env:
        for i in range(3):
            response = await env.router.route(chat(f"n{i}"), objective="quality")
            assert used(response) == "z-premium"
        assert response.metadata is not None
        assert [c.key_id for c in response.metadata.decision.candidates] == ["z-premium", "b-plain", "a-basic"]


async def test_custom_weights_as_a_dict() -> None:
    async with routing_env(
        [
            ("a-premium", "sk-sim-premium", {"provider": "list", "metadata": {"quality": "premium"}}),
            ("b-cheap", "sk-sim-cheap", {"provider": "cheap", "metadata": {"quality": "basic"}}),
        ],
        providers={"list": {}, "cheap": CHEAP},
    ) as env:
        by_cost = await env.router.route(chat("a"), objective={"cost": 1.0})
        by_quality = await env.router.route(chat("b"), objective={"quality": 1.0})
        mixed = await env.router.route(chat("c"), objective={"cost": 1.0, "quality": 3.0})
        assert [used(r) for r in (by_cost, by_quality, mixed)] == ["b-cheap", "a-premium", "a-premium"]
        assert by_cost.metadata is not None and mixed.metadata is not None
        assert by_cost.metadata.decision.objective == "custom"
        assert by_cost.metadata.decision.candidates[0].breakdown.split(" = ")[1].startswith("cost ")
        assert "quality 1.00*0.75" in mixed.metadata.decision.candidates[0].breakdown


@pytest.mark.parametrize(
    "objective",
    ["fastest", {"speed": 1.0}, {"cost": -1.0}, {"cost": 0.0}],
    ids=["unknown-name", "unknown-weight", "negative", "all-zero"],
)
async def test_a_bad_objective_is_an_invalid_request(objective: Any) -> None:
    async with routing_env([("k", "sk-sim-k", {})]) as env:
        with pytest.raises(InvalidRequest) as info:
            await env.router.route(chat("x"), objective=objective)
        assert info.value.param == "objective"
        assert env.sim.stats("sk-sim-k").requests == 0


async def test_explanation_names_the_chosen_key_and_every_excluded_key_with_its_reason() -> None:
    async with routing_env(
        [
            ("bad", "sk-sim-invalid", {"metadata": {"quality": "premium"}}),
            ("tight", "sk-sim-tight", {"metadata": {"quality": "high"}}),
            ("off", "sk-sim-off", {"metadata": {"quality": "premium"}}),
            ("chosen", "sk-sim-chosen", {}),
        ],
        sim_keys=[{"key": "sk-sim-invalid", "behavior": "invalid"}, {"key": "sk-sim-tight", "rpm": 0}],
        config={"routing": {"objective": "quality", "max_attempts": 4}},
    ) as env:
        await env.router.update_key_state("off", "disabled", reason="billing review")
        first = await env.router.route(chat("first"))  # bad: 401, tight: 429, then chosen
        assert first.metadata is not None
        assert (first.metadata.key_used, first.metadata.attempts) == ("chosen", 3)
        second = await env.router.route(chat("second"))
        assert second.metadata is not None
        decision = second.metadata.decision
        assert [c.key_id for c in decision.candidates] == ["chosen"]
        assert set(decision.excluded) == {"bad", "tight", "off"} and decision.excluded_total == 3
        explanation = decision.explanation
        assert explanation.startswith("chose chosen for gpt-4o-mini by quality: score ")
        assert "off: disabled (billing review)" in explanation
        assert "bad: invalid (auth_invalid" in explanation
        assert "tight: throttled until " in explanation and "(Retry-After " in explanation
        assert env.router.decision(decision.id) == decision.to_json()
