"""A scripted `RouterAPI` for proxy tests, and a helper running the proxy on our real server (h11 on trio).

`FakeRouter` answers from a script (responses or errors, in order), can hold a route or a stream open,
and records what happened to it (calls, deadlines seen, cancellations) so tests can assert on it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import attrs
import trio

from apikeyrouter.domain.history import HistoryRow, StateQuery
from apikeyrouter.domain.request import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse, Usage
from apikeyrouter.errors import UnknownKey, UnknownModel, UnknownProvider
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.observe import EventBus
from apikeyrouter.proxy import Listening, ProxyApp, serve_proxy
from apikeyrouter.runtime.api import APIKey
from apikeyrouter.secret import Secret
from apikeyrouter.store.memory import MemoryStore

CLIENT_TOKEN = "sk-client-test-token-0001"
ADMIN_TOKEN = "admin-test-token-0002"


def metadata(key: str = "oa-1", attempts: int = 1, decision: str = "d-1") -> ResponseMetadata:
    return ResponseMetadata(
        key_used=key, provider="openai", cost=Decimal("0.0001"), attempts=attempts, latency_s=0.01, decision_id=decision
    )


def answer(content: str = "Hello there!", *, key: str = "oa-1", attempts: int = 1) -> SystemResponse:
    return SystemResponse(
        content=content,
        model="gpt-4o-mini",
        usage=Usage(input_tokens=9, output_tokens=3),
        finish_reason="stop",
        raw={"id": "chatcmpl-upstream-1"},
        metadata=metadata(key, attempts, f"d-{attempts}"),
    )


@attrs.define
class FakeStream:
    metadata: ResponseMetadata
    chunks: list[StreamChunk]
    delay: float
    fail_with: Exception | None
    router: FakeRouter

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        for i, chunk in enumerate(self.chunks):
            pause = self.router.stream_pauses[i] if i < len(self.router.stream_pauses) else self.delay
            if pause:
                await trio.sleep(pause)
            self.router.chunks_sent += 1
            yield chunk
        if self.fail_with is not None:
            raise self.fail_with


class FakeRouter:
    def __init__(self) -> None:
        self.events = EventBus()
        self.history = MemoryStore()
        self.model_list = ["gpt-4o-mini", "gpt-4o"]
        self.script: list[SystemResponse | Exception] = []
        self.route_delay = 0.0
        self.is_ready = True
        self.calls: list[tuple[RequestIntent, Any, str | None]] = []
        self.deadlines: list[float] = []
        self.route_started = trio.Event()
        self.route_cancelled = trio.Event()
        # streams
        self.stream_chunks = [
            StreamChunk(delta="Hel"),
            StreamChunk(delta="lo"),
            StreamChunk(delta="!", finish_reason="stop"),
            StreamChunk(usage=Usage(input_tokens=9, output_tokens=3)),
        ]
        self.stream_delay = 0.0
        self.stream_pauses: list[float] = []  # before chunk i, instead of `stream_delay`
        self.stream_open_error: Exception | None = None
        self.stream_fail_with: Exception | None = None
        self.stream_started = trio.Event()
        self.stream_cancelled = trio.Event()
        self.stream_closed = trio.Event()
        self.chunks_sent = 0
        # keys and decisions
        self._ids = itertools.count(1)
        self._keys: dict[str, dict[str, Any]] = {}
        self._secrets: dict[str, Secret] = {}
        self._decisions: dict[str, dict[str, Any]] = {
            "d-1": {"id": "d-1", "model": "gpt-4o-mini", "chosen": "oa-1", "explanation": "oa-1 scored best"}
        }

    # -- routing ----------------------------------------------------------------------------------------

    def _intent(self, intent: RequestIntent | Mapping[str, Any]) -> RequestIntent:
        return intent if isinstance(intent, RequestIntent) else RequestIntent.from_openai(intent)

    async def route(
        self, intent: RequestIntent | Mapping[str, Any], *, objective: Any = None, client: str | None = None
    ) -> SystemResponse:
        intent = self._intent(intent)
        self.calls.append((intent, objective, client))
        self.deadlines.append(trio.current_effective_deadline())
        if intent.model not in self.model_list:
            raise UnknownModel(intent.model)
        self.route_started.set()
        try:
            if self.route_delay:
                await trio.sleep(self.route_delay)
        except trio.Cancelled:
            self.route_cancelled.set()
            raise
        outcome = self.script.pop(0) if self.script else answer()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @asynccontextmanager
    async def stream(
        self, intent: RequestIntent | Mapping[str, Any], *, objective: Any = None, client: str | None = None
    ) -> AsyncIterator[FakeStream]:
        intent = self._intent(intent)
        self.calls.append((intent, objective, client))
        self.deadlines.append(trio.current_effective_deadline())
        if intent.model not in self.model_list:
            raise UnknownModel(intent.model)
        if self.stream_open_error is not None:
            raise self.stream_open_error
        self.stream_started.set()
        try:
            yield FakeStream(metadata(), list(self.stream_chunks), self.stream_delay, self.stream_fail_with, self)
        except trio.Cancelled:
            self.stream_cancelled.set()
            raise
        finally:
            self.stream_closed.set()

    # -- state ------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return list(self.model_list)

    def ready(self) -> bool:
        return self.is_ready

    def keys(self) -> list[dict[str, Any]]:
        return list(self._keys.values())

    def key(self, key_id: str) -> dict[str, Any] | None:
        return self._keys.get(key_id)

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return []

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._decisions.values())[-limit:]

    async def query_state(self, query: StateQuery) -> list[HistoryRow]:
        return await self.history.query(query)  # a real (empty unless a test writes to it) memory store

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        return self._decisions.get(decision_id)

    def budgets(self) -> dict[str, Any]:
        return {}

    async def shared_budgets(self) -> dict[str, Any]:
        return self.budgets()

    def tree(self) -> TreeNode:
        return TreeNode(name="root", kind="supervisor", status="running", restarts=0)

    def get_state_summary(self) -> dict[str, Any]:
        return {"keys": self.keys(), "decisions": len(self._decisions)}

    async def register_key(
        self,
        secret: str,
        provider: str,
        metadata: Mapping[str, str] | None = None,
        *,
        key_id: str | None = None,
        limits: Mapping[str, int] | None = None,
        models: list[str] | None = None,
        max_in_flight: int | None = None,
    ) -> APIKey:
        if provider != "openai":
            raise UnknownProvider(provider)
        key_id = key_id or f"key-{next(self._ids)}"
        handle = Secret(secret)
        self._secrets[key_id] = handle
        self._keys[key_id] = {
            "id": key_id,
            "provider": provider,
            "fingerprint": handle.fingerprint,
            "lifecycle": "active",
            "breaker": "closed",
            "capacity": "abundant",
            "capacity_left_pct": 100.0,
            "in_flight": 0,
            "success_rate": 1.0,
            "latency_ms": 120.0,
            "spend": "0.00",
            "models": list(models or []),
            "metadata": dict(metadata or {}),
            "limits": dict(limits or {}),
        }
        return APIKey(key_id, provider, handle.fingerprint, dict(metadata or {}))

    def _entry(self, key_id: str) -> dict[str, Any]:
        entry = self._keys.get(key_id)
        if entry is None:
            raise UnknownKey(key_id)
        return entry

    async def revoke_key(self, key_id: str, reason: str = "revoked by operator") -> None:
        self._entry(key_id)["lifecycle"] = "revoked"

    async def rotate_key(self, key_id: str, new_secret: str) -> None:
        handle = Secret(new_secret)
        self._secrets[key_id] = handle
        self._entry(key_id)["fingerprint"] = handle.fingerprint

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        self._entry(key_id)["lifecycle"] = state


@attrs.define
class RunningProxy:
    app: ProxyApp
    listening: Listening
    shutdown: trio.Event

    @property
    def url(self) -> str:
        return self.listening.url


@asynccontextmanager
async def running_proxy(
    router: FakeRouter, *, grace: float = 5.0, admin: bool = True, open_inference: bool = False, **options: Any
) -> AsyncIterator[RunningProxy]:
    """The proxy on its real server on 127.0.0.1 (a free port), stopped gracefully on exit."""
    app = ProxyApp(
        router,
        client_tokens=() if open_inference else [Secret(CLIENT_TOKEN)],
        admin_token=Secret(ADMIN_TOKEN) if admin else None,
        **options,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(
            partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=shutdown.wait, grace=grace)
        )
        try:
            yield RunningProxy(app, listening, shutdown)
        finally:
            shutdown.set()


def auth(token: str = CLIENT_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
