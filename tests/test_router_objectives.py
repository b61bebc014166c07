"""Each routing objective prefers the right key, against the simulator over 127.0.0.1 (real clock).

Ties between equal scores go to the least-served key, then the key id: the keys below are named so that
the tie-break alone would pick the *wrong* key, so each test shows the objective doing the choosing.
Nothing here asserts on timing: the slow simulator key is slower by hundreds of milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from apikeyrouter import InvalidRequest
from apikeyrouter.intent import SystemResponse
from tests.routing_env import chat, routing_env

CHEAP = {"prices": {"gpt-4o-mini": ("0.01", "0.02")}}  # per million tokens: far below the list price


def used(response: SystemResponse) -> str:
    assert response.metadata is not None
    return response.metadata.key_used


@pytest.mark.parametrize(
    "objective",
    ["fastest", {"speed": 1.0}, {"cost": -1.0}, {"cost": 0.0}],
    ids=["unknown-name", "unknown-weight", "negative", "all-zero"],
)
async def test_a_bad_objective_is_an_invalid_request(objective: Any) -> None:
    async with routing_env([("k", "sk-sim-k", {})]) as env:
        with pytest.raises(InvalidRequest) as info:
            await env.router.route(chat("x"), objective=objective)
        assert info.value.param == "objective"
        assert env.sim.stats("sk-sim-k").requests == 0
