"""A fake router for the debug channel tests: a real supervision tree, canned key entries, a real EventBus.

The entries follow the shapes documented in `apikeyrouter.runtime.api`. The debug server is a child of the
fake's root supervisor, as it will be in the real application.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from apikeyrouter.debug import DebugServer
from apikeyrouter.domain.circuit import BreakerHalfOpened
from apikeyrouter.domain.history import HistoryRow, StateQuery
from apikeyrouter.domain.lifecycle import Cause, KeyState, Transition
from apikeyrouter.kernel import ActorRef
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.kernel.spec import ChildSpec, Strategy, SupervisorSpec
from apikeyrouter.observe import EventBus, KeyBreakerChanged, KeyTransitioned, ProviderHealthChanged
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.supervisors import Supervisor
from tests.kernel_actors import Counter, CounterMsg

# A secret-shaped string that must never leave the debug channel.
LEAKY_SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
THROTTLE_WALL = "2026-05-01T12:34:56Z"


def transition(key: str, frm: str, to: str, reason: str = "429") -> KeyTransitioned:
    """A `key.transition` event as a key actor publishes it, at the current trio time."""
    at = trio.current_time()
    return KeyTransitioned(key, Transition(KeyState(frm), KeyState(to), reason, at, Cause.FAILURE))


def breaker_half_opened(key: str) -> KeyBreakerChanged:
    return KeyBreakerChanged(key, BreakerHalfOpened(trio.current_time()))


def provider_degraded(provider: str) -> ProviderHealthChanged:
    return ProviderHealthChanged(provider, True, "5 server-side failures", trio.current_time())


def canned_keys(now: float) -> dict[str, dict[str, Any]]:
    base = {
        "fingerprint": "fp:0123456789",
        "lifecycle_until": None,
        "lifecycle_until_wall": None,
        "lifecycle_reason": None,
        "breaker_until": None,
        "breaker_until_wall": None,
        "max_in_flight": 8,
        "models": ["gpt-4o-mini"],
        "metadata": {"team": "search"},
        "limits": {"rpm": 500},
        "requests": 120,
    }
    entries = [
        {
            **base,
            "id": "openai-1",
            "provider": "openai",
            "lifecycle": "active",
            "capacity": "abundant",
            "capacity_left_pct": 82.5,
            "prediction": {"seconds_to_exhaustion": None, "confidence": None},
            "breaker": "closed",
            "in_flight": 2,
            "success_rate": 0.985,
            "latency_ms": 412.0,
            "spend": "1.2345",
        },
        {
            **base,
            "id": "openai-2",
            "provider": "openai",
            "fingerprint": "fp:abcdefabcd",
            "lifecycle": "throttled",
            "lifecycle_until": now + 42.0,
            "lifecycle_until_wall": THROTTLE_WALL,
            "lifecycle_reason": f"429 rate_limited (provider said: invalid key {LEAKY_SECRET})",
            "capacity": "critical",
            "capacity_left_pct": 3.0,
            "prediction": {"seconds_to_exhaustion": 252.0, "confidence": 0.62},
            "breaker": "closed",
            "in_flight": 0,
            "success_rate": 0.9,
            "latency_ms": 380.0,
            "spend": "0.50",
        },
        {
            **base,
            "id": "anthropic-1",
            "provider": "anthropic",
            "fingerprint": "fp:fedcba9876",
            "lifecycle": "active",
            "capacity": "constrained",
            "capacity_left_pct": 35.0,
            "prediction": {"seconds_to_exhaustion": 3900.0, "confidence": 0.4},
            "breaker": "open",
            "breaker_until": now + 30.0,
            "breaker_until_wall": "2026-05-01T12:34:44Z",
            "in_flight": 1,
            "success_rate": 0.5,
            "latency_ms": 950.0,
            "spend": "7.00",
        },
    ]
    return {e["id"]: e for e in entries}


def canned_transitions(now: float) -> dict[str, list[dict[str, Any]]]:
    return {
        "openai-2": [
            {
                "key": "openai-2",
                "from": "active",
                "to": "throttled",
                "reason": "429 rate_limited: Retry-After 42",
                "at": now - 3.0,
                "at_wall": "2026-05-01T12:34:11Z",
                "until": now + 42.0,
            }
        ]
    }


def canned_decisions(now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": "d-1",
            "at": now - 2.0,
            "request_id": "r-1",
            "model": "gpt-4o-mini",
            "objective": "cost",
            "chosen": "openai-1",
            "candidates": [{"key": "openai-1", "score": 0.91, "breakdown": {"cost": 0.9}}],
            "excluded": {"openai-2": "throttled until 12:34:56Z", "anthropic-1": "breaker open"},
            "excluded_total": 2,
            "explanation": "openai-1: cheapest eligible key with capacity",
        },
        {
            "id": "d-2",
            "at": now - 1.0,
            "request_id": "r-2",
            "model": "gpt-4o-mini",
            "objective": "reliability",
            "chosen": None,
            "candidates": [],
            "excluded": {"openai-2": "throttled", "anthropic-1": "breaker open", "openai-1": "in-flight limit"},
            "excluded_total": 3,
            "explanation": "no eligible key: every key excluded",
        },
    ]


class FakeRouter:
    """What the debug server needs of `RouterAPI`, backed by a real supervision tree."""

    def __init__(self, socket_path: str | None = None, **debug_options: Any) -> None:
        now = trio.current_time()
        self.events = EventBus()
        self.history = MemoryStore()
        self.entries = canned_keys(now)
        self.transition_log = canned_transitions(now)
        self.decision_log = canned_decisions(now)
        self.debug: DebugServer | None = None
        keys = [ChildSpec(f"key:{k}", _counter(f"key:{k}"), shutdown=1.0) for k in self.entries]
        children = [
            ChildSpec(
                "providers", lambda: Supervisor("providers", SupervisorSpec(Strategy.ONE_FOR_ONE), keys), shutdown=2.0
            ),
            ChildSpec("router", _counter("router"), shutdown=1.0),
        ]
        if socket_path is not None:
            children.append(ChildSpec("debug", lambda: self._make_debug(socket_path, debug_options), shutdown=1.0))
        self.root = Supervisor("root", SupervisorSpec(intensity=5), children)

    def _make_debug(self, path: str, options: dict[str, Any]) -> DebugServer:
        self.debug = DebugServer(self, path, **options)  # type: ignore[arg-type]
        return self.debug

    def tree(self) -> TreeNode:
        return self.root.tree()

    def keys(self) -> list[dict[str, Any]]:
        return list(self.entries.values())

    def key(self, key_id: str) -> dict[str, Any] | None:
        return self.entries.get(key_id)

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return self.transition_log.get(key_id, [])[-limit:]

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.decision_log[-limit:]

    async def query_state(self, query: StateQuery) -> list[HistoryRow]:
        return await self.history.query(query)  # a real (empty unless a test writes to it) memory store

    def key_actor(self, key_id: str) -> ActorRef[CounterMsg]:
        providers = self.root.child("providers")
        assert isinstance(providers, Supervisor)
        actor = providers.child(f"key:{key_id}")
        assert isinstance(actor, Counter)
        return actor.ref


def _counter(name: str) -> Any:
    return lambda: Counter(name, mailbox=8)


def short_socket_dir() -> str:
    """pytest's tmp_path can exceed the ~104-byte limit of a Unix socket path; this does not."""
    return tempfile.mkdtemp(prefix="akr-")


@asynccontextmanager
async def running_fake(path: str, **debug_options: Any) -> AsyncIterator[FakeRouter]:
    fake = FakeRouter(path, **debug_options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.root.run)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel(reason="test over")


class ThreadedFake:
    """A fake router with its debug channel, running in its own thread with its own `trio.run`.

    For tests of code that calls `trio.run` itself (the CLI) or blocks (plain sockets).
    """

    def __init__(self, path: str, **debug_options: Any) -> None:
        self.path = path
        self._options = debug_options
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.fake: FakeRouter | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with running_fake(self.path, **self._options) as fake:
            self.fake = fake
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                self._ready.set()
                await trio.sleep_forever()

    def run_sync(self, fn: Any, *args: Any) -> Any:
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def __enter__(self) -> ThreadedFake:
        self._thread.start()
        self._ready.wait(10)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scope is not None:
            self.run_sync(self._scope.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive()


@contextmanager
def threaded_fake(path: str | None = None, **debug_options: Any) -> Iterator[ThreadedFake]:
    directory = None
    if path is None:
        directory = short_socket_dir()
        path = os.path.join(directory, "debug.sock")
    try:
        with ThreadedFake(path, **debug_options) as served:
            yield served
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


async def eventually(predicate: Any) -> None:
    """Wait (at most 5 s) until `predicate()` holds. Polling on purpose: these are counters without events."""
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.005)


def exists(path: str) -> bool:
    return os.path.exists(path)
