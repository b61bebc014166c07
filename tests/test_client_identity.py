"""Client tokens map to identities: the proxy attributes each request to a client id, never its token."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from apikeyrouter.config import client_identities, config_to_dict, parse_config
from apikeyrouter.domain.budget import BudgetSoftExceeded
from apikeyrouter.errors import ConfigError
from apikeyrouter.observe import BudgetSoftExceededEvent, EventBus, RequestAttempted
from apikeyrouter.observe.client_metrics import ClientMetrics
from apikeyrouter.secret import Secret
from tests.proxy_fakes import CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy

ACME_TOKEN = "tok-acme-0123456789abcdef"


def config_errors(data: dict[str, object], env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {})
    return info.value.errors


def test_clients_and_teams_load_with_their_tokens_from_the_environment() -> None:
    config = parse_config(
        {
            "teams": [{"id": "search", "budget": {"limit": "10", "period": "week", "mode": "soft"}, "rpm": 100}],
            "clients": [{"id": "acme", "token_env": "ACME_TOKEN", "team": "search", "metadata": {"tier": "gold"}}],
        },
        {"ACME_TOKEN": ACME_TOKEN},
    )
    acme = config.client("acme")
    assert acme is not None and acme.team == "search" and acme.token == Secret(ACME_TOKEN)
    assert client_identities(config) == ((Secret(ACME_TOKEN), "acme"),)
    assert ACME_TOKEN not in repr(config) and ACME_TOKEN not in str(config_to_dict(config))


def test_client_and_team_mistakes_name_the_field_and_its_path() -> None:
    errors = config_errors(
        {
            "teams": [{"id": "search", "rmp": 5}],
            "clients": [
                {"id": "acme", "team": "serch", "token_env": "ACME_TOKEN"},
                {"id": "beta", "budget": {"limit": "1", "period": "year"}, "objective": "cheap"},
                {"id": "gamma", "token": "tok-gamma-0123456789", "token_env": "GAMMA"},
            ],
            "budgets": {"timezone": "Mars/Olympus"},
        }
    )
    assert "extra fields found (rmp) @ config.teams[0]; did you mean 'rpm'?" in errors
    assert "unknown team 'serch' @ config.clients[0].team" in errors
    assert (
        "missing token for client acme: environment variable ACME_TOKEN is not set @ config.clients[0].token_env"
        in errors
    )
    assert "invalid value 'year', expected one of: hour, day, week, month @ config.clients[1].budget.period" in errors
    assert "client gamma sets both token and token_env; keep one @ config.clients[2]" in errors
    assert any(e.endswith("@ config.budgets.timezone") and "Mars/Olympus" in e for e in errors)


def test_two_clients_cannot_share_a_token() -> None:
    errors = config_errors(
        {
            "server": {"client_tokens": [ACME_TOKEN]},
            "clients": [{"id": "acme", "token_env": "T"}],
        },
        {"T": ACME_TOKEN},
    )
    assert errors == ("client acme has the same token as server.client_tokens @ config.clients[0]",)


async def test_the_proxy_attributes_a_request_to_the_client_its_token_names() -> None:
    router = FakeRouter()
    async with (
        running_proxy(router, clients=[(Secret(ACME_TOKEN), "acme")]) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth(ACME_TOKEN))).status_code == 200
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth(CLIENT_TOKEN))).status_code == 200
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth("tok-nobody-12345"))).status_code == 401
    clients = [client for _, _, client in router.calls]
    # A [[clients]] token is its id; a flat server.client_tokens token is an anonymous client (its fingerprint).
    assert clients == ["acme", Secret(CLIENT_TOKEN).fingerprint]


async def test_clients_alone_close_inference_to_everyone_else() -> None:
    router = FakeRouter()
    async with (
        running_proxy(router, open_inference=True, clients=[(Secret(ACME_TOKEN), "acme")]) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 401
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth(ACME_TOKEN))).status_code == 200


def test_metrics_count_attempts_by_client_and_team_and_soft_budget_overruns() -> None:
    registry, events = CollectorRegistry(), EventBus(wall_offset=0.0)
    ClientMetrics(registry, events, lambda: {"team:search": {"limit": "5", "spent": "1.5", "reserved": "0"}})
    events.publish(RequestAttempted("req-1", "k1", "openai", 1, "dec-1", None, 0.1, 1.0, client="acme", team="search"))
    one = Decimal(1)
    events.publish(BudgetSoftExceededEvent(BudgetSoftExceeded("h", "team:search", one, one, one, one, 1.0)))
    text = generate_latest(registry).decode()
    assert 'apikeyrouter_client_attempts_total{client="acme",outcome="success",team="search"} 1.0' in text
    assert 'apikeyrouter_budget_soft_exceeded_total{budget="team:search"} 1.0' in text
    assert 'apikeyrouter_budget_spent{budget="team:search"} 1.5' in text
