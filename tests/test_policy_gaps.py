"""What reconcile learns is used (the cost objective, soft budgets' projections), a policy can ride on one
request, and a dry run over recorded decisions knows its cost delta."""

from __future__ import annotations

import re
from decimal import Decimal

from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.reconcile import Ratio
from apikeyrouter.domain.scoring import KeyView, ScoringConfig, rank
from tests.routing_env import chat
from tests.sim_transport import sim_env

KEYS = [("k1", "sk-sim-1", {}), ("k2", "sk-sim-2", {})]

# Worst case (a quarter of the tokens output), "wordy" is dearer; but its answers use a tenth of max_tokens.
TERSE = ModelPrice(Decimal("3.00"), Decimal("3.00"))
WORDY = ModelPrice(Decimal("1.00"), Decimal("10.00"))


def _cost_part(breakdown: str) -> float:
    found = re.search(r"cost ([0-9.]+)\*", breakdown)
    assert found is not None, breakdown
    return float(found.group(1))


def test_the_cost_objective_ranks_by_the_expected_cost_once_ratios_are_learned() -> None:
    terse, wordy = KeyView("terse", "a", default_price=TERSE), KeyView("wordy", "b", default_price=WORDY)
    nothing_learned = ScoringConfig()
    assert rank([terse, wordy], "m", "cost", 0.0, 1, nothing_learned)[0][0] == "terse"  # the worst case decides
    learned = ScoringConfig(ratios={("b", "m"): Ratio(output=0.1, input=1.0, samples=20)})
    assert rank([terse, wordy], "m", "cost", 0.0, 1, learned)[0][0] == "wordy"
    other_model = ScoringConfig(ratios={("b", "other"): Ratio(output=0.1, input=1.0, samples=20)})
    assert rank([terse, wordy], "m", "cost", 0.0, 1, other_model)[0][0] == "terse"  # learned per (provider, model)


async def test_the_router_scores_cost_with_the_ratios_its_answers_taught_it() -> None:
    async with sim_env(KEYS) as env:
        first = await env.router.route(chat("hi"), objective="cost")
        before = _cost_part(first.metadata.decision.candidates[0].breakdown)
        assert before == round(1 / (1 + (0.15 * 0.75 + 0.60 * 0.25)), 2)  # nothing learned then: the worst case
        for _ in range(5):
            await env.router.route(chat("hi"), objective="cost")
        learned = env.router.get_state_summary()["reconcile"]["openai/gpt-4o-mini"]
        assert learned["output_ratio"] < 1
        after = await env.router.route(chat("hi"), objective="cost")
        # Answers use less than max_tokens: the expected cost is lower than the worst case, the score higher.
        assert _cost_part(after.metadata.decision.candidates[0].breakdown) > before
        # An explanation read later still says what the decision saw (the ratio of its time, not today's).
        assert _cost_part(first.metadata.decision.candidates[0].breakdown) == before
