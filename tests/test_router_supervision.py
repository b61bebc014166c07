"""The router's supervision tree end to end: keys survive a restart of their provider's subtree, and a
provider subtree stops within the configured grace."""

from __future__ import annotations

from typing import Any

import httpx
import trio
import trio.testing

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.config import parse_config
from apikeyrouter.runtime import ApiKeyRouter, open_router
from apikeyrouter.sim import SimServer, parse_sim_config
from tests.routing_env import chat


class Poison:
    """Not a provider message: the provider actor's `match` ends in `assert_never`, so it crashes on it."""


async def test_keys_from_config_and_register_key_survive_a_provider_subtree_restart() -> None:
    sim = SimServer(parse_sim_config({}))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        config = parse_config(
            {
                "providers": [{"id": "sim", "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}],
                "keys": [{"id": "cfg", "provider": "sim", "secret": "sk-sim-cfg"}],
            },
            env={},
        )
        async with open_router(config) as router:
            await router.register_key("sk-sim-rt", "sim", key_id="rt")
            refs = {k: router.key_ref(k) for k in ("cfg", "rt")}
            provider = router.provider_ref("sim")
            # provider:sim (rest_for_one, intensity 5 in 30 s): six crashes of its provider actor and it
            # gives up; `providers` then restarts the whole subtree.
            for _ in range(6):
                await provider.tell(Poison())  # type: ignore[arg-type]
                await trio.testing.wait_all_tasks_blocked()
            providers = next(n for n in router.tree().children if n.name == "providers")
            subtree = next(n for n in providers.children if n.name == "provider:sim")
            assert subtree.restarts == 1
            assert sorted(k["id"] for k in router.keys()) == ["cfg", "rt"]
            for key_id, ref in refs.items():
                key = router.key(key_id)
                assert router.key_ref(key_id) is ref and key is not None and key["restarts"] == 6
            for i in range(4):
                with trio.fail_after(10):
                    response = await router.route(chat(f"after the restart {i}"))
                assert response.metadata is not None and response.metadata.key_used in refs
        nursery.cancel_scope.cancel()


class HangingAdapter(OpenAIAdapter):
    """An upstream that accepts the call and never answers."""

    def make_client(self) -> httpx.AsyncClient:
        async def hang(request: httpx.Request) -> httpx.Response:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        return httpx.AsyncClient(transport=httpx.MockTransport(hang))


async def test_a_provider_subtree_drains_for_the_configured_grace(autojump_clock: trio.testing.MockClock) -> None:
    outcome: list[str] = []

    async def call(router: ApiKeyRouter) -> None:
        try:
            await router.route(chat("never answered"))
        except Exception as exc:
            outcome.append(type(exc).__name__)

    config: dict[str, Any] = {"server": {"grace_period": 8}}
    async with trio.open_nursery() as callers:
        async with ApiKeyRouter(parse_config(config, env={})) as router:
            await router.register_provider("hang", HangingAdapter(base_url="http://upstream.invalid/v1"))
            await router.register_key("sk-test-hang", "hang", key_id="k")
            callers.start_soon(call, router)
            await trio.testing.wait_all_tasks_blocked()
            stopping = trio.current_time()
        # The provider actor waits for its call in flight for the whole configured grace, then is cancelled.
        assert trio.current_time() - stopping == 8.0
        await trio.testing.wait_all_tasks_blocked()
    assert outcome and outcome[0] != "AssertionError"
