"""A bad objective tells the caller what they can pass, in their words (not a Python type name)."""

from __future__ import annotations

import pytest

from apikeyrouter import ApiKeyRouter
from apikeyrouter.errors import InvalidRequest


async def test_an_unknown_objective_names_the_choices() -> None:
    async with ApiKeyRouter() as router:
        with pytest.raises(InvalidRequest) as info:
            await router.route(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, objective="fast"
            )
    message = str(info.value)
    assert "unknown objective 'fast'; expected one of: reliability, cost, fairness, latency, quality" in message
    assert 'weights such as {"cost": 0.6, "latency": 0.4}' in message
    assert "Weights" not in message
