"""What the chaos suites share: a router config pointing at a hostile upstream, the budget and in-flight
checks through public state, and a call that classifies what the caller got."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import httpx
import trio

from apikeyrouter.config import RouterConfig, parse_config
from apikeyrouter.debug.client import call as debug_call
from apikeyrouter.errors import ApiKeyRouterError
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.standalone import Started, run_standalone
from tests.chaos.scenarios import DEADLINE, KEYS, READ_TIMEOUT, outcome_of, request_body


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


CLIENT_TOKEN = "sk-chaos-client-token-0001"
ADMIN_TOKEN = "chaos-admin-token-0002"
CLIENT = {"authorization": f"Bearer {CLIENT_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def serve_data(upstream: str, socket_dir: str, keys: Mapping[str, str] = KEYS, **sections: Any) -> dict[str, Any]:
    """What `serve` would load from TOML: the proxy on a free port with its debug channel, in front of `upstream`."""
    server = {
        "host": "127.0.0.1",
        "port": 0,
        "client_tokens": [CLIENT_TOKEN],
        "admin_token": ADMIN_TOKEN,
        "grace_period": 1.0,
        "request_deadline": DEADLINE,
    }
    debug = {"enabled": True, "socket": f"{socket_dir}/debug.sock"}
    return config_data(upstream, keys, server=server, debug=debug, **sections)


@asynccontextmanager
async def serving(config: RouterConfig) -> AsyncIterator[Started]:
    """The standalone process's own code path (`run_standalone`, as `apikeyrouter serve` runs it), in this
    test's nursery: the h11 server on a real socket, the supervision tree, the debug channel."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        started: Started = await nursery.start(partial(run_standalone, config, handle_signals=False, stop=stop))
        try:
            yield started
        finally:
            stop.set()


@contextmanager
def short_tempdir() -> Iterator[str]:
    """A directory for a Unix socket (pytest's tmp_path can be longer than a socket path may be)."""
    path = tempfile.mkdtemp(prefix="akr-chaos-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sse_events(body: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body (JSON decoded; `[DONE]` as the string)."""
    out: list[Any] = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str), error
    return dict(error)


async def wait_released_http(http: httpx.AsyncClient, socket: str, within: float = 2.0) -> None:
    """Through the process's public surfaces: `GET /state` in-flight, the debug channel's `actor budgets`."""

    async def held() -> tuple[int, dict[str, str]]:
        state = (await http.get("/state", headers=ADMIN)).json()
        budgets = (await debug_call(socket, "actor", id="budgets"))["state"]
        return state["in_flight"], {b: e["reserved"] for b, e in budgets.items() if Decimal(e["reserved"])}

    with trio.move_on_after(within):
        while await held() != (0, {}):
            await trio.sleep(0.02)
    assert await held() == (0, {})
