"""`[[policies]]`: policies as data (domain/policy.py), structured strictly and validated with paths.

Each table is structured on its own (unknown fields rejected, as everywhere in the config); then the
whole set is validated against what the config declares — providers, keys, teams, clients and, when
every provider lists its models, the models — so `policies[3].match.models: unknown model 'gpt-5o'`
is reported as `unknown model 'gpt-5o' @ config.policies[3].match.models`, with every other error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from apikeyrouter.config._convert import converter, describe_errors
from apikeyrouter.config._schema import ClientConfig, KeyConfig, ProviderConfig, TeamConfig
from apikeyrouter.domain.policy import Policy, Universe, validate

__all__ = ["parse_policies", "structure_policies", "universe_of"]

T = TypeVar("T")


class _Parser(Protocol):
    def error(self, message: str, path: str) -> None: ...

    def array(self, data: Mapping[str, Any], name: str) -> list[tuple[int, dict[str, Any]]]: ...

    def structure(self, raw: Mapping[str, Any], cls: type[T], path: str) -> T | None: ...


def universe_of(
    providers: Sequence[ProviderConfig],
    keys: Sequence[KeyConfig],
    teams: Sequence[TeamConfig],
    clients: Sequence[ClientConfig],
    *,
    extra_models: frozenset[str] = frozenset(),
) -> Universe:
    """What policies may name. Models are checked only when every provider lists the ones it serves
    (a provider that lists none serves any model, so no name could be called unknown)."""
    listed = all(p.models for p in providers) and bool(providers)
    models = frozenset(m for p in providers for m in (*p.models, *p.pricing)) | frozenset(
        m for k in keys for m in k.models
    )
    return Universe(
        models=(models | extra_models) if listed or extra_models else None,
        providers=frozenset(p.id for p in providers),
        keys=frozenset(k.id for k in keys),
        teams=frozenset(t.id for t in teams),
        clients=frozenset(c.id for c in clients),
    )


def parse_policies(p: _Parser, data: Mapping[str, Any], universe: Universe) -> list[Policy]:
    policies: list[Policy] = []
    indexes: list[int] = []
    broken = False
    for index, raw in p.array(data, "policies"):
        policy = p.structure(raw, Policy, f"config.policies[{index}]")
        if policy is None:
            broken = True
            continue
        policies.append(policy)
        indexes.append(index)
    for path, message in validate(policies, universe):
        # validate numbers the policies it was given; put back each one's place in the file
        head, _, rest = path.partition("]")
        position = int(head.removeprefix("policies["))
        p.error(message, f"config.policies[{indexes[position]}]{rest}")
    return [] if broken else policies


def structure_policies(raws: object) -> tuple[list[Policy], list[str], list[int]]:
    """Policies from JSON-like tables (the HTTP API, a policy file), strictly, as the config does:
    (policies, errors, the index of each policy among the tables), errors as `policies[i].field: message`."""
    if isinstance(raws, Mapping):
        raws = raws.get("policies", [raws])  # one policy, or a document holding a list
    if not isinstance(raws, list | tuple):
        return [], ["policies: expected a list of policy tables"], []
    policies: list[Policy] = []
    errors: list[str] = []
    indexes: list[int] = []
    for index, raw in enumerate(raws):
        path = f"policies[{index}]"
        if not isinstance(raw, Mapping):
            errors.append(f"{path}: expected a table")
            continue
        try:
            policies.append(converter.structure(dict(raw), Policy))
            indexes.append(index)
        except Exception as exc:
            for line in describe_errors(exc, path):
                message, _, where = line.rpartition(" @ ")
                where, _, hint = where.partition("; ")
                errors.append(f"{where}: {message}" + (f"; {hint}" if hint else ""))
    return policies, errors, indexes
