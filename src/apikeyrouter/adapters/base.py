"""The `ProviderAdapter` interface: everything provider-specific lives behind it.

The core never sees a provider's wire format. An adapter:
- builds its own `httpx.AsyncClient` (`make_client`), whose lifetime its owner (a ProviderActor) manages
  (the built-in ones build a `PooledClient`, whose h11 pool they then drive directly; they take any other
  `httpx.AsyncClient` too, through httpx);
- executes a `RequestIntent` with a `Secret`, non-streaming (`complete`) or streaming (`open_stream`);
- raises `UpstreamError` (with a `FailureClass`) for every failure, never a bare httpx error;
- reads quota signals from response headers into a `QuotaSignal`;
- declares its capabilities and estimates cost before the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Protocol, runtime_checkable

import attrs
import httpx

from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.request import RequestIntent, StreamChunk, SystemResponse, Usage
from apikeyrouter.domain.signal import Capabilities, QuotaSignal
from apikeyrouter.secret import Secret

__all__ = ["AdapterResult", "AdapterStream", "ProviderAdapter"]


@attrs.frozen
class AdapterResult:
    response: SystemResponse
    signal: QuotaSignal


class AdapterStream(Protocol):
    """An open streamed response. `signal` is known from the headers before the first chunk."""

    signal: QuotaSignal

    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...

    @property
    def usage(self) -> Usage | None:
        """Usage seen so far (final once the stream ends; partial if it was cut)."""
        ...


@runtime_checkable
class ProviderAdapter(Protocol):
    kind: str  # "openai" | "anthropic" | "generic"
    capabilities: Capabilities

    def make_client(self) -> httpx.AsyncClient: ...

    async def complete(self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret) -> AdapterResult: ...

    def open_stream(
        self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret
    ) -> AbstractAsyncContextManager[AdapterStream]: ...

    def estimate(self, intent: RequestIntent) -> CostEstimate: ...

    def cost(self, model: str, usage: Usage) -> Decimal: ...
