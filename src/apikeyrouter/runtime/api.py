"""The surface the proxy and the debug channel use to talk to a running router.

`ApiKeyRouter` implements `RouterAPI`. Keeping the proxy and the debug channel behind this protocol lets
them be tested against a small fake. The JSON shapes (built once, in runtime/views.py):

key entry (`keys()` items, `/state`, `/keys`, debug `keys`):
    {"id", "provider", "fingerprint", "lifecycle", "lifecycle_until", "lifecycle_reason",
     "capacity", "capacity_left_pct", "prediction": {"seconds_to_exhaustion", "confidence"},
     "breaker", "breaker_until", "in_flight", "max_in_flight", "success_rate", "latency_ms",
     "spend", "requests", "models", "metadata", "limits": {...}}
    (`*_until` are trio times, plus `*_until_wall` strings for humans, `render_wall`: ISO-8601 UTC with
    milliseconds; money as strings)
tree node (`tree_to_json`): {"name", "kind", "status", "restarts", "mailbox": {"depth", "capacity"} | None,
     "children": [...], "last_crash"}
transition: {"key", "from", "to", "reason", "cause", "at", "at_wall", "until", "until_wall"} (as in a
    `key.transition` event: `observe.events.transition_fields`)
decision: {"id", "at", "at_wall", "request_id", "model", "objective", "chosen", "candidates": [{"key", "score",
     "breakdown"}], "excluded": {key_id: reason}, "excluded_total", "retry_at", "retry_at_wall", "explanation"}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs

from apikeyrouter.domain.history import HistoryRow, StateQuery
from apikeyrouter.domain.request import RequestIntent, ResponseMetadata, StreamChunk, SystemResponse
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.observe import EventBus

__all__ = ["APIKey", "RoutedStream", "RouterAPI"]


@attrs.frozen
class APIKey:
    """A registered key as its owner sees it: a stable id and a fingerprint, never the secret."""

    id: str
    provider: str
    fingerprint: str
    metadata: Mapping[str, str] = attrs.field(factory=dict)


class RoutedStream(Protocol):
    """An open routed stream. `metadata` is known before the first chunk (key chosen, headers in)."""

    metadata: ResponseMetadata

    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...


class RouterAPI(Protocol):
    @property
    def events(self) -> EventBus: ...

    async def route(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Mapping[str, float] | None = None,
        client: str | None = None,
        policy: Any = None,  # the request's own policy (ApiKeyRouter.route); the proxy passes it only when set
    ) -> SystemResponse: ...

    def stream(
        self,
        intent: RequestIntent | Mapping[str, Any],
        *,
        objective: str | Mapping[str, float] | None = None,
        client: str | None = None,
        policy: Any = None,
    ) -> AbstractAsyncContextManager[RoutedStream]: ...

    def models(self) -> list[str]: ...

    def ready(self) -> bool: ...

    def keys(self) -> list[dict[str, Any]]: ...

    def key(self, key_id: str) -> dict[str, Any] | None: ...

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]: ...

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def budgets(self) -> dict[str, Any]: ...

    async def shared_budgets(self) -> dict[str, Any]: ...

    def decision(self, decision_id: str) -> dict[str, Any] | None: ...

    def tree(self) -> TreeNode: ...

    def get_state_summary(self) -> dict[str, Any]: ...

    async def query_state(self, query: StateQuery) -> list[HistoryRow]: ...

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
    ) -> APIKey: ...

    async def revoke_key(self, key_id: str, reason: str = "revoked by operator") -> None: ...

    async def rotate_key(self, key_id: str, new_secret: str) -> None: ...

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None: ...
