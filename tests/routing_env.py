"""A simulator on 127.0.0.1 and an embedded router in front of it, for scenario tests (real clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.config import parse_config
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.sim import SimServer, parse_sim_config
from apikeyrouter.sim.provider import SimProvider


@attrs.frozen
class Env:
    router: ApiKeyRouter
    sim: SimProvider
    base_url: str


def chat(text: str = "hello", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 32, **extra}


@asynccontextmanager
async def routing_env(
    keys: Sequence[tuple[str, str, Mapping[str, Any]]],
    *,
    sim_keys: Sequence[Mapping[str, Any]] = (),
    sim_defaults: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    providers: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[Env]:
    """`keys`: (key id, secret the simulator sees, register_key kwargs incl. provider)."""
    sim = SimServer(parse_sim_config({"defaults": dict(sim_defaults or {}), "keys": list(sim_keys)}))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        base_url = f"http://127.0.0.1:{port}/v1"
        async with ApiKeyRouter(parse_config(dict(config or {}), env={})) as router:
            for pid, kwargs in (providers or {"openai": {}}).items():
                await router.register_provider(pid, OpenAIAdapter(base_url=base_url, provider=pid, **kwargs))
            for key_id, secret, kwargs in keys:
                opts = dict(kwargs)
                provider = opts.pop("provider", "openai")
                await router.register_key(secret, provider, key_id=key_id, **opts)
            yield Env(router, sim.provider, base_url)
        nursery.cancel_scope.cancel()


async def settle_down(router: ApiKeyRouter) -> None:
    """Let key actors drain their mailboxes (settlements are tells) and wait for in-flight to reach 0."""
    with trio.fail_after(5):
        while any(k["in_flight"] for k in router.keys()):
            await trio.sleep(0.01)
