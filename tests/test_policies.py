"""Policies at work on a live router: who may use which keys, aliases, cost caps, run-time changes, dry-run."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import BudgetExceeded, InvalidRequest
from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError
from apikeyrouter.runtime.policies import PolicyRejected
from tests.routing_env import chat
from tests.sim_transport import sim_env

KEYS = [
    ("eu-1", "sk-sim-eu1", {"metadata": {"region": "eu", "tier": "pool"}}),
    ("us-1", "sk-sim-us1", {"metadata": {"region": "us", "tier": "pool"}}),
    ("us-2", "sk-sim-us2", {"metadata": {"region": "us", "tier": "team"}}),
]
CLIENTS = {
    "teams": [{"id": "search"}],
    "clients": [{"id": "acme"}, {"id": "sam", "team": "search"}, {"id": "bob"}],
}
EU_ONLY = {
    "id": "eu-only",
    "scope": "client:acme",
    "kind": "eligibility",
    "effect": {"require_key_metadata": {"region": "eu"}},
}


def config(*policies: dict[str, Any]) -> dict[str, Any]:
    return {**CLIENTS, "policies": list(policies)}


async def used(router: Any, client: str | None, n: int = 12, **kw: Any) -> set[str]:
    keys = set()
    for i in range(n):
        response = await router.route(chat(f"n{i}", **kw), client=client)
        keys.add(response.metadata.key_used)
    return keys


async def test_an_eu_only_client_is_served_by_eu_keys_and_the_decision_names_the_policy(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sim_env(KEYS, config=config(EU_ONLY)) as env:
        assert await used(env.router, "acme") == {"eu-1"}
        assert (
            len(
                await used(
                    env.router,
                    "bob",
                    n=30,
                )
            )
            > 1
        )  # others spread over every key
        response = await env.router.route(chat("why"), client="acme")
        decision = response.metadata.decision  # type: ignore[union-attr]
        assert decision is not None and decision.client == "acme" and decision.policies == ("eu-only",)
        assert "excluded by policy eu-only" in decision.explanation
        assert env.router.decisions(1)[0]["client"] == "acme"


async def test_team_tier_keys_are_kept_for_their_team(autojump_clock: trio.abc.Clock) -> None:
    policies = (
        {"id": "keep-team-keys", "scope": "global", "kind": "eligibility",
         "effect": {"deny_key_metadata": {"tier": "team"}}},
        {"id": "search-on-team-keys", "scope": "team:search", "kind": "eligibility",
         "effect": {"require_key_metadata": {"tier": "team"}}},
    )  # fmt: skip
    async with sim_env(KEYS, config=config(*policies)) as env:
        assert await used(env.router, "sam") == {"us-2"}
        assert "us-2" not in await used(env.router, "bob", n=30)


async def test_a_model_alias_and_a_policy_objective(autojump_clock: trio.abc.Clock) -> None:
    alias = {"id": "fast", "scope": "global", "kind": "routing",
             "effect": {"aliases": {"fast": "gpt-4o-mini"}, "objective": "cost"}}  # fmt: skip
    async with sim_env(KEYS, config=config(alias)) as env:
        response = await env.router.route(chat("quick", model="fast"), client="bob")
        assert response.metadata is not None and response.metadata.decision is not None
        decision = response.metadata.decision
        assert decision.model == "gpt-4o-mini" and decision.objective == "cost"
        assert "objective cost set by policy fast" in decision.explanation
        assert "model aliased to gpt-4o-mini by policy fast" in decision.explanation


async def test_a_cost_cap_refuses_a_request_whose_worst_case_is_over_it(autojump_clock: trio.abc.Clock) -> None:
    cap = {"id": "small-only", "scope": "client:bob", "kind": "cost", "effect": {"max_cost": "0.00001"}}
    async with sim_env(KEYS, config=config(cap)) as env:
        await env.router.route(chat("tiny", max_tokens=4), client="bob")
        with pytest.raises(BudgetExceeded) as info:
            await env.router.route(chat("long", max_tokens=4000), client="bob")
        assert info.value.budget == "policy:small-only"
        await env.router.route(chat("long", max_tokens=4000), client="acme")  # not bob: not capped


async def test_a_cost_policy_budget_is_held_for_every_request_it_applies_to(autojump_clock: trio.abc.Clock) -> None:
    budget = {"id": "search-spend", "scope": "team:search", "kind": "cost",
              "effect": {"budget": {"limit": "0.00005", "period": "day"}}}  # fmt: skip
    async with sim_env(KEYS, config=config(budget)) as env:
        served = 0
        with pytest.raises(BudgetExceeded, match="policy:search-spend"):
            for _ in range(100):
                await env.router.route(chat("spend"), client="sam")
                served += 1
        assert served >= 1
        await trio.testing.wait_all_tasks_blocked()
        shown = env.router.budgets()["policy:search-spend"]
        assert Decimal(shown["spent"]) <= Decimal(shown["limit"]) and Decimal(shown["reserved"]) == 0
        await env.router.route(chat("spend"), client="bob")  # not the team: not this budget


async def test_a_denied_model_is_refused_naming_the_policy(autojump_clock: trio.abc.Clock) -> None:
    deny = {"id": "no-big-models", "scope": "team:search", "kind": "routing", "effect": {"deny_models": ["gpt-4o"]}}
    async with sim_env(KEYS, config=config(deny)) as env:
        with pytest.raises(InvalidRequest, match="policy no-big-models does not allow model 'gpt-4o'"):
            await env.router.route(chat("big", model="gpt-4o"), client="sam")
        await env.router.route(chat("big", model="gpt-4o"), client="bob")


async def test_policies_change_at_run_time_atomically_and_each_change_is_audited(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with sim_env(KEYS, config=CLIENTS) as env:
        router = env.router
        assert len(await used(router, "acme", n=30)) > 1
        await router.configure_policy(EU_ONLY, who="admin:ab12")
        assert await used(router, "acme") == {"eu-1"}
        with pytest.raises(PolicyRejected) as info:
            await router.set_policies(
                [
                    {"id": "a", "scope": "team:nope", "kind": "routing", "effect": {"objective": "cost"}},
                    {"id": "b", "scope": "global", "kind": "routing", "effect": {"objective": "cheap"}},
                ]
            )
        assert info.value.errors == (
            "policies[0].scope: unknown team 'nope'",
            "policies[1].effect.objective: unknown objective 'cheap', expected one of: reliability, cost, "
            "fairness, latency, quality",
        )
        assert [p["id"] for p in router.policies()] == ["eu-only"]  # nothing of the rejected set applied
        assert await router.remove_policy("eu-only", who="admin:ab12")
        assert not await router.remove_policy("eu-only")
        assert len(await used(router, "acme", n=30)) > 1
        audit = router.policy_audit()
        assert [(a["action"], a["who"], a["policy"]) for a in audit] == [
            ("configure", "admin:ab12", "eu-only"),
            ("remove", "admin:ab12", "eu-only"),
        ]
        assert audit[0]["before"] is None and audit[0]["after"]["scope"] == "client:acme"
        assert audit[1]["after"] is None and audit[0]["at_wall"].endswith("Z")


async def test_a_dry_run_of_a_thousand_recorded_decisions_matches_routing_them_live_and_changes_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    proposed = [
        EU_ONLY,
        {"id": "no-4o-for-search", "scope": "team:search", "kind": "routing", "effect": {"deny_models": ["gpt-4o"]}},
        {"id": "bob-not-eu", "scope": "client:bob", "kind": "eligibility",
         "effect": {"deny_key_metadata": {"region": "eu"}}},
    ]  # fmt: skip
    workload = [(client, model) for client in ("acme", "sam", "bob", None) for model in ("gpt-4o", "gpt-4o-mini")]
    roomy = {"rpm": 100_000, "tpm": 100_000_000}  # the simulator never rate-limits this workload
    async with sim_env(KEYS, sim_defaults=roomy, config={**CLIENTS, "server": {"decision_retention": 2000}}) as env:
        router = env.router
        for i in range(1000):
            client, model = workload[i % len(workload)]
            await router.route(chat("recorded", model=model), client=client)
        await trio.testing.wait_all_tasks_blocked()
        keys_before = {k["id"]: k["requests"] for k in router.keys()}
        budgets_before, decisions_before = router.budgets(), len(router.decisions(5000))

        report = router.dry_run_policy(proposed)

        assert report["requests"] == 1000
        assert {k["id"]: k["requests"] for k in router.keys()} == keys_before  # nothing was sent
        assert router.budgets() == budgets_before and len(router.decisions(5000)) == decisions_before
        assert router.policies() == []  # and nothing applied
        assert report["refused_by_policy"] == {"no-4o-for-search": 125}
        assert report["load_shift"]["eu-1"] > 0 and report["changed_total"] > 0

        await router.set_policies(proposed)
        refused = 0
        for i in range(1000):
            client, model = workload[i % len(workload)]
            try:
                response = await router.route(chat("live", model=model), client=client)
            except InvalidRequest:
                refused += 1
                continue
            key = response.metadata.key_used  # type: ignore[union-attr]
            assert (key == "eu-1") if client == "acme" else True
            assert key != "eu-1" if client == "bob" else True
        assert refused == report["refused_total"] and report["allowed"] == 1000 - refused


async def test_a_config_reload_replaces_the_policies_and_is_audited(autojump_clock: trio.abc.Clock) -> None:
    async with sim_env(KEYS, config=config(EU_ONLY)) as env:
        assert await used(env.router, "acme") == {"eu-1"}
        report = await env.router.apply_config(parse_config(config(), env={}))
        assert report is not None and env.router.policies() == []
        assert len(await used(env.router, "acme", n=30)) > 1
        assert [(a["who"], a["policy"], a["after"]) for a in env.router.policy_audit()] == [
            ("config reload", "eu-only", None)
        ]


def test_policy_mistakes_in_the_config_name_the_policy_and_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "providers": [{"id": "openai", "kind": "openai", "base_url": "http://x", "models": ["gpt-4o-mini"]}],
                "policies": [
                    {"id": "ok", "scope": "global", "kind": "routing", "effect": {"objective": "cost"}},
                    {"id": "typo", "scope": "global", "kind": "routing", "match": {"models": ["gpt-5o"]},
                     "effect": {"objective": "cost"}},
                    {"id": "extra", "scope": "global", "kind": "routing", "effect": {"objective": "cost"}, "when": 1},
                ],
            },
            env={},
        )  # fmt: skip
    assert info.value.errors == (
        "extra fields found (when) @ config.policies[2]",
        "unknown model 'gpt-5o' @ config.policies[1].match.models",
    )
