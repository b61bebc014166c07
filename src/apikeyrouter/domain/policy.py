"""Policies: declarative intent for routing, key eligibility and cost, resolved by a pure function.

A `Policy` is data: an `id`, a `scope`, a `kind`, a `match` (conditions on the request) and an
`effect`. `resolve(policies, ctx)` turns the policies that apply to one request into an
`EffectivePolicy`: a small record of precomputed sets the router's decision reads per key in O(1),
plus the notes its explanation shows (which policy set the objective, aliased the model, excluded a
key or capped the cost).

Scopes, least to most specific: `default` < `global` < `provider:<id>` / `team:<id>` < `client:<id>`
< `request`. A `team:`/`client:` policy applies only to that team's or client's requests; a
`provider:` policy only to the keys of that provider. Conflicts resolve by precedence:

- objective, fallback order, model alias: the most specific policy that sets one wins (at the same
  precedence, the first by id, so the answer never depends on the order policies were added);
- allow and deny (providers, models, keys): an item is excluded when the most specific policy naming
  it denies it — at the same precedence deny beats allow — and the most specific allow-list of a
  dimension restricts it to its items (allow-lists at the same precedence intersect);
- key metadata (`require_key_metadata = {region = "eu"}`): every requirement that applies binds;
  two that want different values of one field leave no key (a contradiction `validate` reports);
- max cost per request: the tightest (lowest) limit binds; every budget that applies is held.

`kind` says what an effect may hold: `routing` (objective or weights, allow/deny providers/models/
keys, key metadata, fallback order, model aliases), `eligibility` (allow/deny keys and key metadata)
and `cost` (max cost per request, a budget). `validate` names the policy and the field of every
mistake (`policies[3].match.models: unknown model 'gpt-5o'`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final, Literal

import attrs

from apikeyrouter.domain.period import check_timezone, zone

__all__ = [
    "KINDS",
    "OBJECTIVE_NAMES",
    "EffectivePolicy",
    "Match",
    "Policy",
    "PolicyBudget",
    "PolicyEffect",
    "RequestContext",
    "Universe",
    "precedence",
    "resolve",
    "validate",
]

KINDS: Final = ("routing", "eligibility", "cost")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
OBJECTIVE_NAMES: Final = ("reliability", "cost", "fairness", "latency", "quality")
_LEVELS: Final = {"default": 0, "global": 1, "provider": 2, "team": 2, "client": 3, "request": 4}
_ROUTING_ONLY: Final = (
    "objective", "allow_providers", "deny_providers", "allow_models", "deny_models", "fallback", "aliases",
)  # fmt: skip
_COST_ONLY: Final = ("max_cost", "budget")
_KEY_FIELDS: Final = ("allow_keys", "deny_keys", "require_key_metadata", "deny_key_metadata")


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@attrs.frozen
class Match:
    """Conditions, all of which must hold (an empty one holds always). `tags`: any of them among the
    request's `x-apikeyrouter-tags`. `hours`: [start, end) local hours in `timezone` (may wrap midnight)."""

    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()  # restricts the effect to these providers' keys
    clients: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    key_metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)  # restricts to those keys
    hours: tuple[int, ...] = ()
    timezone: str = "UTC"


@attrs.frozen
class PolicyBudget:
    limit: Decimal
    period: Literal["hour", "day", "week", "month"] = "month"
    mode: Literal["hard", "soft"] = "hard"


@attrs.frozen
class PolicyEffect:
    objective: str | None = None
    allow_providers: tuple[str, ...] = ()
    deny_providers: tuple[str, ...] = ()
    allow_models: tuple[str, ...] = ()
    deny_models: tuple[str, ...] = ()
    allow_keys: tuple[str, ...] = ()
    deny_keys: tuple[str, ...] = ()
    require_key_metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    deny_key_metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    fallback: tuple[str, ...] = ()  # providers, most preferred first
    aliases: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)  # requested -> real model
    max_cost: Decimal | None = None  # per request, on its worst-case estimate
    budget: PolicyBudget | None = None


@attrs.frozen
class Policy:
    id: str
    scope: str
    kind: Literal["routing", "eligibility", "cost"]
    match: Match = Match()
    effect: PolicyEffect = PolicyEffect()
    description: str = ""
    enabled: bool = True


def precedence(scope: str) -> int:
    """0 (default) to 4 (request); -1 for a scope that is not one."""
    head, _, rest = scope.partition(":")
    level = _LEVELS.get(head, -1)
    if head in ("provider", "team", "client") and not rest:
        return -1
    if head in ("default", "global", "request") and rest:
        return -1
    return level


@attrs.frozen
class RequestContext:
    model: str
    client: str | None = None
    team: str | None = None
    tags: frozenset[str] = frozenset()
    wall: float = 0.0  # the request's wall time (seconds since the epoch), for `hours`


@attrs.frozen
class _KeyRule:
    """A key filter of one policy, restricted to some providers' / metadata's keys (empty: all)."""

    policy: str
    level: int
    providers: frozenset[str]
    match_metadata: tuple[tuple[str, str], ...]
    allow_keys: frozenset[str] | None
    deny_keys: frozenset[str]
    require: tuple[tuple[str, str], ...]
    deny_meta: tuple[tuple[str, str], ...]


@attrs.frozen
class EffectivePolicy:
    """What the policies say about one request, as precomputed sets. `denied_providers` / `denied_keys`:
    id -> the policy that excluded it; `allowed_*`: None means any."""

    model: str
    policies: tuple[str, ...] = ()
    objective: str | None = None
    objective_by: str | None = None
    alias_by: str | None = None
    allowed_providers: frozenset[str] | None = None
    allowed_providers_by: str | None = None
    denied_providers: Mapping[str, str] = attrs.field(factory=dict)
    model_denied_by: str | None = None
    fallback: tuple[str, ...] = ()
    key_rules: tuple[_KeyRule, ...] = ()
    max_cost: Decimal | None = None
    max_cost_by: str | None = None
    budgets: tuple[str, ...] = ()  # "policy:<id>" of every cost policy with a budget that applies
    notes: tuple[str, ...] = ()  # what the policies did, for the decision's explanation (`_notes`)

    @property
    def filters_keys(self) -> bool:
        return bool(self.allowed_providers is not None or self.denied_providers or self.key_rules)

    def excluded_by(self, key_id: str, provider: str, metadata: Mapping[str, str]) -> str | None:
        """The policy that excludes this key from this request, or None when every policy allows it."""
        by = self.denied_providers.get(provider)
        if by is not None:
            return by
        if self.allowed_providers is not None and provider not in self.allowed_providers:
            return self.allowed_providers_by
        granted = -1  # the most specific level that let this key in by name or by its metadata
        for rule in self.key_rules:  # most specific first
            if rule.providers and provider not in rule.providers:
                continue
            if rule.match_metadata and any(metadata.get(k) != v for k, v in rule.match_metadata):
                continue
            # (each `any` only when there is something to check: this runs per ranked key per decision)
            denies = key_id in rule.deny_keys or bool(
                rule.deny_meta and any(metadata.get(k) == v for k, v in rule.deny_meta)
            )
            fails = (rule.allow_keys is not None and key_id not in rule.allow_keys) or bool(
                rule.require and any(metadata.get(k) != v for k, v in rule.require)
            )
            if (denies or fails) and rule.level >= granted:  # same level: deny beats allow
                return rule.policy
            if (rule.allow_keys is not None and key_id in rule.allow_keys) or rule.require:
                granted = max(granted, rule.level)
        return None



def _notes(eff: EffectivePolicy) -> tuple[str, ...]:
    out: list[str] = []
    if eff.objective_by is not None:
        out.append(f"objective {eff.objective} set by policy {eff.objective_by}")
    if eff.alias_by is not None:
        out.append(f"model aliased to {eff.model} by policy {eff.alias_by}")
    if eff.max_cost_by is not None:
        out.append(f"cost capped at {eff.max_cost} by policy {eff.max_cost_by}")
    if eff.fallback:
        out.append(f"provider order {' > '.join(eff.fallback)}")
    return tuple(out)


def _hour_in(match: Match, wall: float) -> bool:
    if len(match.hours) != 2:
        return True
    start, end = match.hours
    try:
        hour = dt.datetime.fromtimestamp(wall, zone(match.timezone)).hour
    except (ValueError, KeyError):
        return False
    return start <= hour < end if start <= end else hour >= start or hour < end


def _applies(p: Policy, ctx: RequestContext) -> bool:
    if not p.enabled:
        return False
    head, _, rest = p.scope.partition(":")
    if head == "team" and rest != ctx.team:
        return False
    if head == "client" and rest != ctx.client:
        return False
    m = p.match
    if m.models and ctx.model not in m.models:
        return False
    if m.clients and ctx.client not in m.clients:
        return False
    if m.teams and ctx.team not in m.teams:
        return False
    if m.tags and not ctx.tags.intersection(m.tags):
        return False
    return _hour_in(m, ctx.wall)


def _alias(ordered: Sequence[Policy], model: str) -> tuple[str, str | None]:
    for p in ordered:
        target = p.effect.aliases.get(model)
        if target is not None:
            return target, p.id
    return model, None


def _decide_items(
    ordered: Sequence[Policy], allow: str, deny: str
) -> tuple[frozenset[str] | None, str | None, dict[str, str]]:
    """Allow-list (most specific level, intersected), its policy, and item -> denying policy."""
    allowed: frozenset[str] | None = None
    allowed_by: str | None = None
    allowed_level = -1
    explicit: dict[str, int] = {}  # item -> the most specific level that allows it by name
    denied: dict[str, tuple[int, str]] = {}
    for p in ordered:  # most specific first
        level = precedence(p.scope)
        items = getattr(p.effect, allow)
        if items:
            for item in items:
                explicit.setdefault(item, level)
            if allowed is None or level == allowed_level:
                allowed = frozenset(items) if allowed is None else allowed & frozenset(items)
                allowed_by, allowed_level = allowed_by or p.id, level
        for item in getattr(p.effect, deny):
            denied.setdefault(item, (level, p.id))
    out = {item: by for item, (level, by) in denied.items() if explicit.get(item, -1) <= level}
    return allowed, allowed_by, out


def resolve(policies: Iterable[Policy], ctx: RequestContext) -> EffectivePolicy:
    """The effective policy of one request (pure: the same policies and context give the same record)."""
    applying = [p for p in policies if _applies(p, ctx)]
    if not applying:
        return EffectivePolicy(model=ctx.model)
    ordered = sorted(applying, key=lambda p: (-precedence(p.scope), p.id))
    model, alias_by = _alias(ordered, ctx.model)
    if alias_by is not None:  # the policies about the real model apply too
        ctx = attrs.evolve(ctx, model=model)
        applying = [p for p in policies if _applies(p, ctx)]
        ordered = sorted(applying, key=lambda p: (-precedence(p.scope), p.id))
    whole = [p for p in ordered if not p.scope.startswith("provider:") and not p.match.providers]
    objective = next(((p.effect.objective, p.id) for p in ordered if p.effect.objective), (None, None))
    fallback = next((p.effect.fallback for p in ordered if p.effect.fallback), ())
    allowed, allowed_by, denied = _decide_items(whole, "allow_providers", "deny_providers")
    models_allowed, models_by, models_denied = _decide_items(ordered, "allow_models", "deny_models")
    model_denied_by = models_denied.get(model)
    if model_denied_by is None and models_allowed is not None and model not in models_allowed:
        model_denied_by = models_by
    caps = [(p.effect.max_cost, p.id) for p in ordered if p.effect.max_cost is not None]
    cap = min(caps, key=lambda c: (c[0], c[1])) if caps else (None, None)
    eff = EffectivePolicy(
        model=model,
        policies=tuple(p.id for p in ordered),
        objective=objective[0],
        objective_by=objective[1],
        alias_by=alias_by,
        allowed_providers=allowed,
        allowed_providers_by=allowed_by,
        denied_providers=denied,
        model_denied_by=model_denied_by,
        fallback=fallback,
        key_rules=tuple(_key_rules(ordered)),
        max_cost=cap[0],
        max_cost_by=cap[1],
        budgets=tuple(f"policy:{p.id}" for p in ordered if p.effect.budget is not None),
    )
    return attrs.evolve(eff, notes=_notes(eff))


def _key_rules(ordered: Sequence[Policy]) -> list[_KeyRule]:
    rules: list[_KeyRule] = []
    for p in ordered:
        e = p.effect
        providers = set(p.match.providers)
        if p.scope.startswith("provider:"):
            providers.add(p.scope.partition(":")[2])
        if not (e.allow_keys or e.deny_keys or e.require_key_metadata or e.deny_key_metadata):
            continue
        rules.append(
            _KeyRule(
                policy=p.id,
                level=precedence(p.scope),
                providers=frozenset(providers),
                match_metadata=tuple(sorted(p.match.key_metadata.items())),
                allow_keys=frozenset(e.allow_keys) if e.allow_keys else None,
                deny_keys=frozenset(e.deny_keys),
                require=tuple(sorted(e.require_key_metadata.items())),
                deny_meta=tuple(sorted(e.deny_key_metadata.items())),
            )
        )
    return rules


# -- validation -----------------------------------------------------------------------------------------


@attrs.frozen
class Universe:
    """What policies may name. None: not checked (a library router without a config of that part)."""

    models: frozenset[str] | None = None
    providers: frozenset[str] | None = None
    keys: frozenset[str] | None = None
    teams: frozenset[str] | None = None
    clients: frozenset[str] | None = None


def _names(
    errors: list[tuple[str, str]], path: str, what: str, names: Iterable[str], known: frozenset[str] | None
) -> None:
    if known is None:
        return
    for name in names:
        if name not in known:
            errors.append((path, f"unknown {what} {name!r}"))


def _check_scope(p: Policy, path: str, u: Universe, errors: list[tuple[str, str]]) -> None:
    if precedence(p.scope) < 0:
        errors.append(
            (
                f"{path}.scope",
                f"invalid scope {p.scope!r}: default, global, provider:<id>, team:<id>, client:<id> or request",
            )
        )
        return
    head, _, rest = p.scope.partition(":")
    known = {"provider": u.providers, "team": u.teams, "client": u.clients}.get(head)
    _names(errors, f"{path}.scope", head, [rest] if rest else [], known)


def _check_kind(p: Policy, path: str, errors: list[tuple[str, str]]) -> None:
    e = p.effect
    set_fields = [f.name for f in attrs.fields(PolicyEffect) if getattr(e, f.name) not in (None, (), {})]
    if not set_fields:
        errors.append((f"{path}.effect", "sets nothing"))
    allowed = {
        "routing": (*_ROUTING_ONLY, *_KEY_FIELDS),
        "eligibility": ("allow_providers", "deny_providers", *_KEY_FIELDS),
        "cost": _COST_ONLY,
    }[p.kind]
    for name in set_fields:
        if name not in allowed:
            errors.append((f"{path}.effect.{name}", f"not an effect of a {p.kind} policy"))


def _check_effect(p: Policy, path: str, u: Universe, errors: list[tuple[str, str]]) -> None:
    e, m = p.effect, p.match
    if e.objective is not None and e.objective not in OBJECTIVE_NAMES:
        errors.append(
            (
                f"{path}.effect.objective",
                f"unknown objective {e.objective!r}, expected one of: {', '.join(OBJECTIVE_NAMES)}",
            )
        )
    for name in ("allow_providers", "deny_providers", "fallback"):
        _names(errors, f"{path}.effect.{name}", "provider", getattr(e, name), u.providers)
    for name in ("allow_models", "deny_models"):
        _names(errors, f"{path}.effect.{name}", "model", getattr(e, name), u.models)
    _names(errors, f"{path}.effect.aliases", "model", e.aliases.values(), u.models)
    for name in ("allow_keys", "deny_keys"):
        _names(errors, f"{path}.effect.{name}", "key", getattr(e, name), u.keys)
    _names(errors, f"{path}.match.models", "model", m.models, u.models)
    _names(errors, f"{path}.match.providers", "provider", m.providers, u.providers)
    _names(errors, f"{path}.match.clients", "client", m.clients, u.clients)
    _names(errors, f"{path}.match.teams", "team", m.teams, u.teams)
    if e.max_cost is not None and e.max_cost < 0:
        errors.append((f"{path}.effect.max_cost", f"must be >= 0 (got {e.max_cost})"))
    if e.budget is not None and e.budget.limit < 0:
        errors.append((f"{path}.effect.budget.limit", f"must be >= 0 (got {e.budget.limit})"))
    if m.hours and (len(m.hours) != 2 or not all(0 <= h <= 24 for h in m.hours)):
        errors.append((f"{path}.match.hours", "must be [start, end), hours from 0 to 24"))
    if (problem := check_timezone(m.timezone)) is not None:
        errors.append((f"{path}.match.timezone", problem))


def _contradictions(p: Policy, path: str, errors: list[tuple[str, str]]) -> None:
    e = p.effect
    for allow, deny, what in (
        ("allow_providers", "deny_providers", "provider"),
        ("allow_models", "deny_models", "model"),
        ("allow_keys", "deny_keys", "key"),
    ):
        allowed = set(getattr(e, allow))
        if allowed and allowed <= set(getattr(e, deny)):
            errors.append((f"{path}.effect", f"{allow} and {deny} leave no {what}"))
    for name, value in e.require_key_metadata.items():
        if e.deny_key_metadata.get(name) == value:
            errors.append(
                (f"{path}.effect", f"require_key_metadata and deny_key_metadata leave no key ({name} = {value!r})")
            )


def _scope_contradictions(policies: Sequence[Policy], errors: list[tuple[str, str]]) -> None:
    """Policies of one scope that together leave nothing: allow-lists that do not meet, or two required
    values of one key metadata field."""
    by_scope: dict[str, list[tuple[int, Policy]]] = {}
    for i, p in enumerate(policies):
        if not p.match.models and not p.match.tags and not p.match.hours and not p.match.clients:
            by_scope.setdefault(p.scope, []).append((i, p))
    for scope, group in by_scope.items():
        for allow, what in (("allow_providers", "provider"), ("allow_models", "model"), ("allow_keys", "key")):
            lists = [(i, set(getattr(p.effect, allow))) for i, p in group if getattr(p.effect, allow)]
            if len(lists) > 1 and not set.intersection(*(s for _, s in lists)):
                where = ", ".join(f"policies[{i}]" for i, _ in lists)
                errors.append(
                    (
                        f"policies[{lists[-1][0]}].effect.{allow}",
                        f"scope {scope}: the {allow} of {where} have no {what} in common",
                    )
                )
        wanted: dict[str, tuple[int, str]] = {}
        for i, p in group:
            for name, value in p.effect.require_key_metadata.items():
                first = wanted.setdefault(name, (i, value))
                if first[1] != value:
                    why = f"scope {scope}: policies[{first[0]}] requires {first[1]!r}, this one {value!r}"
                    errors.append((f"policies[{i}].effect.require_key_metadata.{name}", f"{why}: no key has both"))


def validate(policies: Sequence[Policy], universe: Universe = Universe()) -> list[tuple[str, str]]:
    """Every problem as (path, message), paths like `policies[3].match.models`; [] when the set is valid."""
    errors: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(policies):
        path = f"policies[{i}]"
        if p.id in seen:
            errors.append((f"{path}.id", f"duplicate policy id {p.id!r} (first at policies[{seen[p.id]}])"))
        seen.setdefault(p.id, i)
        if not _ID_RE.fullmatch(p.id):
            errors.append((f"{path}.id", f"invalid id {p.id!r}: up to 64 letters, digits, '.', '_', ':' or '-'"))
        if p.kind not in KINDS:
            errors.append((f"{path}.kind", f"unknown kind {p.kind!r}, expected one of: {', '.join(KINDS)}"))
            continue
        _check_scope(p, path, universe, errors)
        _check_kind(p, path, errors)
        _check_effect(p, path, universe, errors)
        _contradictions(p, path, errors)
    _scope_contradictions(policies, errors)
    return errors
