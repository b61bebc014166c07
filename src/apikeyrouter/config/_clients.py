"""`[[clients]]` and `[[teams]]`: who calls the router, what each may spend and how fast.

Structured like the keys: each table on its own, so one broken table does not hide the others' errors;
a client's token comes from `token_env` (or, with a warning, inline `token`) and is a `Secret` from then
on. Ids follow the provider and key rule; a client's team must be declared; two clients cannot share a
token (the proxy could not tell them apart), nor share one with the flat `server.client_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from apikeyrouter.config._convert import quote_choice
from apikeyrouter.config._schema import OBJECTIVES, Budget, BudgetsConfig, ClientConfig, TeamConfig
from apikeyrouter.domain.period import check_timezone
from apikeyrouter.secret import Secret

__all__ = ["check_budget", "client_identities", "parse_clients", "parse_teams"]

T = TypeVar("T")


class _Parser(Protocol):
    env: Mapping[str, str]
    warnings: list[str]
    source: str

    def error(self, message: str, path: str) -> None: ...

    def array(self, data: Mapping[str, Any], name: str) -> list[tuple[int, dict[str, Any]]]: ...

    def structure(self, raw: Mapping[str, Any], cls: type[T], path: str) -> T | None: ...

    def unique_id(self, raw: Mapping[str, Any], seen: set[str], kind: str, path: str) -> bool: ...

    def env_name(self, name: object, path: str) -> str | None: ...

    def secret(self, value: str, path: str, what: str) -> Secret | None: ...

    def at_least(self, value: Any, minimum: float, path: str, *, strict: bool = False) -> None: ...


def client_identities(config: Any) -> tuple[tuple[Secret, str], ...]:
    """(token, client id) of every configured client that has a token: what the proxy authenticates."""
    return tuple((c.token, c.id) for c in config.clients if c.token is not None)


def check_budget(p: _Parser, budget: Budget | None, path: str) -> None:
    if budget is not None:
        p.at_least(budget.limit, 0, f"{path}.limit")


def check_timezone_of(p: _Parser, budgets: BudgetsConfig) -> None:
    if (problem := check_timezone(budgets.timezone)) is not None:
        p.error(problem, "config.budgets.timezone")
    check_budget(p, budgets.client_default, "config.budgets.client_default")


def parse_teams(p: _Parser, data: Mapping[str, Any]) -> list[TeamConfig]:
    teams: list[TeamConfig] = []
    seen: set[str] = set()
    for index, raw in p.array(data, "teams"):
        path = f"config.teams[{index}]"
        valid = p.unique_id(raw, seen, "team", path)
        team = p.structure(raw, TeamConfig, path)
        if team is None or not valid:
            continue
        p.at_least(team.rpm, 1, f"{path}.rpm")
        p.at_least(team.tpm, 1, f"{path}.tpm")
        check_budget(p, team.budget, f"{path}.budget")
        teams.append(team)
    return teams


def _token(p: _Parser, raw: dict[str, Any], label: str, path: str) -> bool:
    """Resolve `token_env` into `raw["token"]`; False when the token is unusable (already reported)."""
    if "token" in raw and "token_env" in raw:
        p.error(f"client {label} sets both token and token_env; keep one", path)
        return False
    if "token" in raw:
        p.warnings.append(f"client {label} has its token inline in {p.source}; prefer token_env")
        return True
    if "token_env" not in raw:
        return True  # a client the library names (route(client=...)); the proxy cannot authenticate it
    name = p.env_name(raw["token_env"], f"{path}.token_env")
    if name is None:
        return False
    value = p.env.get(name)
    if value is None or not value.strip():
        state = "is not set" if value is None else "is empty"
        p.error(f"missing token for client {label}: environment variable {name} {state}", f"{path}.token_env")
        return False
    secret = p.secret(value.strip(), f"{path}.token_env", f"the token of client {label} in environment variable {name}")
    if secret is None:
        return False
    raw["token"] = secret
    return True


def parse_clients(
    p: _Parser,
    data: Mapping[str, Any],
    teams: Sequence[TeamConfig],
    flat_tokens: Sequence[Secret],
) -> list[ClientConfig]:
    clients: list[ClientConfig] = []
    seen: set[str] = set()
    team_ids = {t.id for t in teams} | {
        raw["id"] for _, raw in p.array(data, "teams") if isinstance(raw.get("id"), str)
    }
    tokens: list[tuple[Secret, str]] = [(t, "server.client_tokens") for t in flat_tokens]
    for index, raw in p.array(data, "clients"):
        path = f"config.clients[{index}]"
        label = raw["id"] if isinstance(raw.get("id"), str) else f"clients[{index}]"
        valid = p.unique_id(raw, seen, "client", path)
        team = raw.get("team")
        if isinstance(team, str) and team not in team_ids:  # before structuring: shown even with other errors
            p.error(f"unknown team {quote_choice(team)}", f"{path}.team")
        if not _token(p, raw, label, path):
            raw.pop("token", None)
            valid = False
        client = p.structure(raw, ClientConfig, path)
        if client is None or not valid:
            continue
        _check_client(p, client, path)
        if client.token is not None:
            clash = next((owner for t, owner in tokens if t.matches(client.token.reveal())), None)
            if clash is not None:
                p.error(f"client {label} has the same token as {clash}", path)
            tokens.append((client.token, f"client {label}"))
        clients.append(client)
    return clients


def _check_client(p: _Parser, client: ClientConfig, path: str) -> None:
    p.at_least(client.rpm, 1, f"{path}.rpm")
    p.at_least(client.tpm, 1, f"{path}.tpm")
    check_budget(p, client.budget, f"{path}.budget")
    if client.objective is not None and client.objective not in OBJECTIVES:
        p.error(
            f"unknown objective {quote_choice(client.objective)}, expected one of: {', '.join(OBJECTIVES)}",
            f"{path}.objective",
        )
