"""What the chaos suites share: a router config pointing at a hostile upstream, the budget and in-flight
checks through public state, and a call that classifies what the caller got."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import trio

from apikeyrouter import open_router
from apikeyrouter.actors.base import TreeNode
from apikeyrouter.config import RouterConfig, parse_config
from apikeyrouter.errors import ApiKeyRouterError
from apikeyrouter.runtime import ApiKeyRouter
from tests.chaos.scenarios import DEADLINE, KEYS, READ_TIMEOUT, outcome_of, request_body

__all__ = ["budgets_reserved", "call", "config_for", "open_router", "wait_released"]


def config_data(upstream: str, keys: Mapping[str, str] = KEYS, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "routing": {"objective": "reliability", "max_attempts": 3},
        "providers": [
            {
                "id": "hostile",
                "kind": "openai",
                "base_url": f"{upstream}/v1",
                "models": ["gpt-4o-mini"],
                "connect_timeout": READ_TIMEOUT,
                "read_timeout": READ_TIMEOUT,
            }
        ],
        "keys": [{"id": key_id, "provider": "hostile", "secret": secret} for key_id, secret in keys.items()],
        # A global budget, so every request holds money on it and the release of every hold is checked.
        "budgets": {"global": {"limit": "1000"}},
        "debug": {"enabled": False},
    }
    data.update(sections)
    return data


def config_for(upstream: str, keys: Mapping[str, str] = KEYS, **sections: Any) -> RouterConfig:
    return parse_config(config_data(upstream, keys, **sections), env={})


def _find(node: TreeNode, name: str) -> TreeNode | None:
    if node.name == name:
        return node
    for child in node.children:
        found = _find(child, name)
        if found is not None:
            return found
    return None


def budgets_reserved(tree: TreeNode) -> dict[str, Decimal]:
    """What each budget holds right now, from the `budgets` actor's published state (the tree the debug
    channel's `actor budgets` shows): nothing should be held once no request is running."""
    node = _find(tree, "budgets")
    assert node is not None and isinstance(node.state, Mapping), node
    return {bid: Decimal(entry["reserved"]) for bid, entry in node.state.items()}


async def wait_released(router: ApiKeyRouter, within: float = 2.0) -> None:
    """Settlements are tells: give them a moment, then every reservation and budget hold must be gone."""
    with trio.move_on_after(within):
        while any(k["in_flight"] for k in router.keys()) or any(budgets_reserved(router.tree()).values()):
            await trio.sleep(0.02)
    assert [(k["id"], k["in_flight"]) for k in router.keys() if k["in_flight"]] == []
    assert {b: r for b, r in budgets_reserved(router.tree()).items() if r} == {}


async def call(router: ApiKeyRouter, stream: bool, deadline: float = DEADLINE) -> tuple[str, float]:
    """One request as a caller with `deadline` makes it: (what it got, how long it took)."""
    start = trio.current_time()
    outcome = "deadline"
    with trio.move_on_after(deadline):
        try:
            if stream:
                async with router.stream(request_body(True)) as handle:
                    async for _ in handle:
                        pass
            else:
                await router.route(request_body(False))
            outcome = "ok"
        except ApiKeyRouterError as exc:
            outcome = outcome_of(exc)
    return outcome, trio.current_time() - start
