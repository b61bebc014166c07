"""What reconcile learns is used (the cost objective, soft budgets' projections), a policy can ride on one
request, and a dry run over recorded decisions knows its cost delta."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from decimal import Decimal

import httpx
import pytest
import trio
import trio.testing

from apikeyrouter.domain.cost import ModelPrice
from apikeyrouter.domain.reconcile import Ratio
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.domain.scoring import KeyView, ScoringConfig, rank
from apikeyrouter.observe import EventBus
from apikeyrouter.runtime.policies import PolicyRejected
from tests.proxy_fakes import CHAT, auth, running_proxy
from tests.routing_env import chat, routing_env
from tests.sim_transport import SimAdapter, SimTransport, sim_env

KEYS = [("k1", "sk-sim-1", {}), ("k2", "sk-sim-2", {})]
HEADER = "x-apikeyrouter-policy"

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


def worst_case() -> Decimal:
    """What a budget holds for one `chat()` request on the simulated provider."""
    adapter = SimAdapter(SimTransport(None))  # type: ignore[arg-type]
    return adapter.estimate(RequestIntent.from_openai(chat("burst"))).worst_case_cost


async def test_a_soft_budget_projects_from_expected_spend_and_a_hard_one_from_the_worst_case(
    autojump_clock: trio.abc.Clock,
) -> None:
    limit = str(worst_case() * 15)
    config = {
        "clients": [
            {"id": "soft", "budget": {"limit": limit, "period": "day", "mode": "soft"}},
            {"id": "hard", "budget": {"limit": limit, "period": "day"}},
        ]
    }
    events = EventBus(wall_offset=dt.datetime(2027, 3, 1, 9, tzinfo=dt.UTC).timestamp() - trio.current_time())
    async with sim_env(KEYS, sim_defaults={"latency_ms": 500}, config=config, events=events) as env:
        for _ in range(3):  # answers teach reconcile that they use far less than max_tokens
            for client in ("soft", "hard"):
                await env.router.route(chat("burst"), client=client)
        async with trio.open_nursery() as nursery:
            for i in range(20):  # ten each, all in flight (held) when the status is read
                nursery.start_soon(functools.partial(env.router.route, chat("burst"), client=("soft", "hard")[i % 2]))
            await trio.testing.wait_all_tasks_blocked()
            soft, hard = env.router.get_budget_status("client:soft"), env.router.get_budget_status("client:hard")
            assert soft is not None and hard is not None
            assert soft["spent"] == hard["spent"] and soft["reserved"] == hard["reserved"] == str(worst_case() * 10)
            assert hard["projection_basis"] == "worst_case" and "reserved_expected" not in hard
            assert soft["projection_basis"] == "expected"
            assert Decimal(0) < Decimal(soft["reserved_expected"]) < Decimal(soft["reserved"])
            # The same spend, the same holds: the soft budget expects to last longer.
            assert hard["projected_exhaustion"] is not None
            assert soft["projected_exhaustion"] is not None
            assert soft["projected_exhaustion"] > hard["projected_exhaustion"]


# -- a request's own policy --------------------------------------------------------------------------

REGIONS = [
    ("eu-1", "sk-sim-eu1", {"metadata": {"region": "eu"}}),
    ("us-1", "sk-sim-us1", {"metadata": {"region": "us"}}),
    ("us-2", "sk-sim-us2", {"metadata": {"region": "us"}}),
]
ACME_POLICY = {
    "id": "acme-keys",
    "scope": "client:acme",
    "kind": "routing",
    "effect": {"allow_keys": ["eu-1", "us-1"], "objective": "cost"},
}
ACME = {"clients": [{"id": "acme"}]}


async def test_a_request_policy_is_the_most_specific_and_wins_over_the_clients(
    autojump_clock: trio.abc.Clock,
) -> None:
    own = {"kind": "routing", "effect": {"deny_keys": ["eu-1"], "objective": "latency"}}
    async with sim_env(REGIONS, config=ACME) as env:
        await env.router.configure_policy(ACME_POLICY)  # it names keys registered at run time
        plain = {(await env.router.route(chat(f"n{i}"), client="acme")).metadata.key_used for i in range(12)}
        assert "eu-1" in plain and plain <= {"eu-1", "us-1"}  # the client's policy alone
        for i in range(12):
            response = await env.router.route(chat(f"o{i}"), client="acme", policy=own)
            decision = response.metadata.decision
            assert response.metadata.key_used == "us-1"  # the client allows eu-1 by name; this request denies it
            assert decision.objective == "latency"  # the request's objective over the client's
            assert set(decision.policies) == {"acme-keys", "request"}
            assert decision.excluded["eu-1"] == "eu-1: excluded by policy request"
            assert decision.excluded["us-2"] == "us-2: excluded by policy acme-keys"
        assert "objective latency set by policy request" in decision.explanation
        # Nothing stays behind: the next request without one is the client's again.
        after = await env.router.route(chat("again"), client="acme")
        assert after.metadata.decision.objective == "cost" and "request" not in after.metadata.decision.policies
        assert [p["id"] for p in env.router.policies()] == ["acme-keys"]


async def test_a_request_policy_is_validated_like_any_and_names_the_field(autojump_clock: trio.abc.Clock) -> None:
    async with sim_env(REGIONS, config=ACME) as env:
        cases = [
            ({"kind": "routing", "effect": {"objective": "fastest"}}, "policy.effect.objective: "),
            ({"kind": "routing", "effect": {"deny_keys": ["nope"]}}, "policy.effect.deny_keys: unknown key 'nope'"),
            ({"kind": "routing", "effect": {"objectiv": "cost"}}, "policy.effect: extra fields found (objectiv)"),
            ({"scope": "client:acme", "kind": "routing"}, "policy.scope: a request's own policy has scope request"),
            ({"kind": "cost", "effect": {"budget": {"limit": "1"}}}, "policy.effect.budget: "),
            ([{"kind": "routing"}, {"kind": "nonsense"}], "policy[1].kind: "),
        ]
        for given, error in cases:
            with pytest.raises(PolicyRejected) as caught:
                await env.router.route(chat("x"), client="acme", policy=given)
            assert caught.value.param == "policy"
            assert any(e.startswith(error) for e in caught.value.errors), (error, caught.value.errors)
        assert env.router.decisions(10) == []  # refused before any decision


async def test_the_proxy_takes_a_request_policy_from_its_header_and_refuses_a_bad_one() -> None:
    keys = REGIONS[:2]
    eu = json.dumps({"kind": "eligibility", "effect": {"require_key_metadata": {"region": "eu"}}})
    async with (
        routing_env(keys) as env,
        running_proxy(env.router) as proxy,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        for _ in range(6):
            ok = await http.post("/v1/chat/completions", json=CHAT, headers={**auth(), HEADER: eu})
            assert ok.status_code == 200, ok.text
            assert ok.headers["x-apikeyrouter-key-id"] == "eu-1"
        decision = env.router.decisions(1)[0]
        assert decision["policies"] == ["request"] and "excluded by policy request" in decision["explanation"]
        bad = {"kind": "routing", "effect": {"objective": "fastest"}}
        for raw, field in [
            (json.dumps(bad), "policy.effect.objective"),
            ("{not json", "not valid JSON"),
            ('"eu"', "expected a JSON object"),
        ]:
            refused = await http.post("/v1/chat/completions", json=CHAT, headers={**auth(), HEADER: raw})
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == HEADER
            assert field in error["message"]


# -- dry run over recorded decisions: the cost delta -------------------------------------------------

UPGRADE = {"id": "upgrade", "scope": "global", "kind": "routing", "effect": {"aliases": {"gpt-4o-mini": "gpt-4o"}}}


async def test_recorded_decisions_carry_their_tokens_and_a_dry_run_prices_its_cost_delta(
    autojump_clock: trio.abc.Clock,
) -> None:
    adapter = SimAdapter(SimTransport(None))  # type: ignore[arg-type]
    async with sim_env(KEYS) as env:
        bodies = [chat("short"), chat("a somewhat longer question, with more words in it", max_tokens=200)]
        for body in bodies * 3:
            await env.router.route(body)
        recorded = env.router.decisions(6)
        for d, body in zip(recorded, bodies * 3, strict=True):
            est = adapter.estimate(RequestIntent.from_openai(body))
            assert (d["input_tokens"], d["max_tokens"]) == (est.input_tokens, est.max_output_tokens)

        def worst(body: dict[str, object], model: str) -> Decimal:
            return adapter.estimate(RequestIntent.from_openai({**body, "model": model})).worst_case_cost

        expected = sum((worst(b, "gpt-4o") - worst(b, "gpt-4o-mini") for b in bodies * 3), Decimal(0))
        report = env.router.dry_run_policy([UPGRADE])  # the recorded decisions, replayed
        assert report["requests"] == 6 and Decimal(report["cost_delta"]) == expected > 0
        # Decisions from a file (`policy dry-run --against`) carry them too; one without them: unknown.
        assert Decimal(env.router.dry_run_policy([UPGRADE], recorded)["cost_delta"]) == expected
        unpriced = [{k: v for k, v in d.items() if k != "input_tokens"} for d in recorded]
        assert env.router.dry_run_policy([UPGRADE], unpriced)["cost_delta"] is None


async def test_a_recorded_decision_with_custom_weights_replays_under_the_routers_objective(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sim_env(KEYS) as env:
        await env.router.route(chat("weighed"), objective={"cost": 1.0, "latency": 1.0})
        recorded = env.router.decisions(1)
        assert recorded[0]["objective"] == "custom"  # the weights themselves are not recorded
        report = env.router.dry_run_policy([UPGRADE], recorded)
        assert report["requests"] == 1 and report["refused_total"] == 0 and report["cost_delta"] is not None
