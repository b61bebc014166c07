"""Policy resolution: precedence, deny beats allow, the tightest limit binds, and validation naming fields."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from apikeyrouter.domain.policy import (
    Match,
    Policy,
    PolicyBudget,
    PolicyEffect,
    RequestContext,
    Universe,
    resolve,
    validate,
)

EU = {"region": "eu"}
US = {"region": "us"}


ANY = Match()


def pol(pid: str, scope: str, kind: str = "routing", match: Match = ANY, **effect: Any) -> Policy:
    return Policy(pid, scope, kind, match, PolicyEffect(**effect))  # type: ignore[arg-type]


def ctx(**kw: Any) -> RequestContext:
    return RequestContext(**{"model": "gpt-4o-mini", **kw})


def test_no_policy_changes_nothing() -> None:
    eff = resolve([], ctx())
    assert eff.objective is None and not eff.filters_keys and eff.excluded_by("k1", "openai", {}) is None


def test_the_most_specific_objective_wins_and_its_policy_is_named() -> None:
    policies = [
        pol("g", "global", objective="reliability"),
        pol("t", "team:search", objective="latency"),
        pol("c", "client:acme", objective="cost"),
        pol("d", "default", objective="fairness"),
    ]
    assert (resolve(policies, ctx()).objective, resolve(policies, ctx()).objective_by) == ("reliability", "g")
    eff = resolve(policies, ctx(client="acme", team="search"))
    assert (eff.objective, eff.objective_by) == ("cost", "c")
    assert "objective cost set by policy c" in eff.notes
    assert resolve(policies, ctx(client="other", team="search")).objective == "latency"


def test_at_the_same_precedence_deny_beats_allow() -> None:
    policies = [
        pol("allow", "global", allow_providers=("openai", "anthropic")),
        pol("deny", "global", deny_providers=("openai",)),
    ]
    eff = resolve(policies, ctx())
    assert eff.excluded_by("k1", "openai", {}) == "deny"
    assert eff.excluded_by("k2", "anthropic", {}) is None
    assert eff.excluded_by("k3", "azure", {}) == "allow"  # not on the allow-list


def test_a_more_specific_allow_overrides_a_less_specific_deny() -> None:
    policies = [
        pol("no-openai", "global", deny_providers=("openai",)),
        pol("acme-openai", "client:acme", allow_providers=("openai",)),
    ]
    assert resolve(policies, ctx()).excluded_by("k1", "openai", {}) == "no-openai"
    assert resolve(policies, ctx(client="acme")).excluded_by("k1", "openai", {}) is None


def test_an_eu_only_client_uses_only_eu_keys() -> None:
    policies = [pol("eu-only", "client:acme", "eligibility", require_key_metadata=EU)]
    eff = resolve(policies, ctx(client="acme"))
    assert eff.excluded_by("k-eu", "openai", EU) is None
    assert eff.excluded_by("k-us", "openai", US) == "eu-only"
    assert eff.excluded_by("k-none", "openai", {}) == "eu-only"
    assert resolve(policies, ctx(client="other")).excluded_by("k-us", "openai", US) is None


def test_team_tier_keys_are_kept_for_their_team() -> None:
    policies = [
        pol("reserve-team-keys", "global", "eligibility", deny_key_metadata={"tier": "team"}),
        pol("search-uses-them", "team:search", "eligibility", require_key_metadata={"tier": "team"}),
    ]
    others, search = resolve(policies, ctx(team="ads")), resolve(policies, ctx(team="search"))
    assert others.excluded_by("kt", "openai", {"tier": "team"}) == "reserve-team-keys"
    assert others.excluded_by("kp", "openai", {"tier": "pool"}) is None
    assert search.excluded_by("kt", "openai", {"tier": "team"}) is None
    assert search.excluded_by("kp", "openai", {"tier": "pool"}) == "search-uses-them"


def test_a_provider_scope_applies_to_that_providers_keys_only() -> None:
    policies = [pol("no-k1", "provider:openai", "eligibility", deny_keys=("k1", "a1"))]
    eff = resolve(policies, ctx())
    assert eff.excluded_by("k1", "openai", {}) == "no-k1"
    assert eff.excluded_by("a1", "anthropic", {}) is None


def test_the_tightest_cost_cap_binds_and_every_budget_applies() -> None:
    policies = [
        pol("cap-global", "global", "cost", max_cost=Decimal("0.10")),
        pol("cap-acme", "client:acme", "cost", max_cost=Decimal("0.50")),
        pol("cap-team", "team:search", "cost", max_cost=Decimal("0.02"), budget=PolicyBudget(Decimal("5"))),
        pol("spend", "global", "cost", budget=PolicyBudget(Decimal("100"), "day", "soft")),
    ]
    eff = resolve(policies, ctx(client="acme", team="search"))
    assert (eff.max_cost, eff.max_cost_by) == (Decimal("0.02"), "cap-team")
    assert set(eff.budgets) == {"policy:cap-team", "policy:spend"}


def test_a_model_alias_routes_the_real_model_and_its_policies_apply() -> None:
    policies = [
        pol("fast", "global", aliases={"fast": "gpt-4o-mini"}),
        pol("mini-cheap", "global", match=Match(models=("gpt-4o-mini",)), objective="cost"),
    ]
    eff = resolve(policies, ctx(model="fast"))
    assert eff.model == "gpt-4o-mini" and eff.alias_by == "fast" and eff.objective == "cost"


def test_matches_on_tags_clients_and_time_of_day() -> None:
    policies = [
        pol("batch", "global", match=Match(tags=("batch",)), objective="cost"),
        pol("office", "global", match=Match(hours=(9, 17), timezone="Europe/Paris"), objective="latency"),
    ]
    noon_paris = dt.datetime(2027, 6, 1, 10, 0, tzinfo=dt.UTC).timestamp()
    night = dt.datetime(2027, 6, 1, 23, 0, tzinfo=dt.UTC).timestamp()
    assert resolve(policies, ctx(tags=frozenset({"batch"}), wall=night)).objective == "cost"
    assert resolve(policies, ctx(wall=noon_paris)).objective_by == "office"
    assert resolve(policies, ctx(wall=night)).objective is None


def test_a_model_denied_by_policy_is_named() -> None:
    policies = [pol("no-big", "team:ads", deny_models=("gpt-4o",))]
    assert resolve(policies, ctx(model="gpt-4o", team="ads")).model_denied_by == "no-big"
    assert resolve(policies, ctx(model="gpt-4o", team="search")).model_denied_by is None


def test_validation_names_the_policy_and_the_field() -> None:
    universe = Universe(
        models=frozenset({"gpt-4o", "gpt-4o-mini"}),
        providers=frozenset({"openai"}),
        teams=frozenset({"search"}),
        clients=frozenset({"acme"}),
    )
    policies = [
        pol("ok", "global", objective="cost"),
        pol("bad-scope", "team:nope", objective="cost"),
        pol("bad-kind-field", "global", "cost", objective="cost"),
        pol("typo", "global", match=Match(models=("gpt-5o",)), objective="cost"),
        pol("nothing-left", "global", allow_providers=("openai",), deny_providers=("openai",)),
        pol("ok", "client:acme", "eligibility", require_key_metadata=EU),
        pol("clash", "client:acme", "eligibility", require_key_metadata=US),
    ]
    errors = dict(validate(policies, universe))
    assert errors["policies[1].scope"] == "unknown team 'nope'"
    assert errors["policies[2].effect.objective"] == "not an effect of a cost policy"
    assert errors["policies[3].match.models"] == "unknown model 'gpt-5o'"
    assert errors["policies[4].effect"] == "allow_providers and deny_providers leave no provider"
    assert errors["policies[5].id"].startswith("duplicate policy id 'ok'")
    assert "no key has both" in errors["policies[6].effect.require_key_metadata.region"]
    assert validate(policies[:1], universe) == []
