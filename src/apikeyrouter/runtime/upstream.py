"""One upstream call, run in the caller's task on a client leased from the provider actor.

The caller's cancel scope is the call's: a caller that leaves (deadline, client disconnect) aborts the
httpx request, mid-stream included. How the call ended is told to the provider actor (`CallEnded`), whose
receive loop judges provider health. A provider that stops mid-call (or is gone) is a connection failure,
so the request fails over like after any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import trio

from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.adapters.base import AdapterResult, AdapterStream, ProviderAdapter
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import RequestIntent
from apikeyrouter.errors import ActorStopped, StreamInterrupted, UpstreamError
from apikeyrouter.messages.provider import CallEnded
from apikeyrouter.runtime.asks import tell_bounded
from apikeyrouter.secret import Secret

__all__ = ["complete", "open_stream", "provider_gone"]

log = structlog.get_logger("apikeyrouter.provider")


def provider_gone(provider: str, key_id: str, exc: Exception, *, streaming: bool = False) -> UpstreamError:
    """A provider actor restarting (or removed by a reload) around a call: a connection failure."""
    cls = StreamInterrupted if streaming else UpstreamError
    return cls(
        f"provider {provider} unavailable: {exc}", failure=FailureClass.CONNECTION, provider=provider, key_id=key_id
    )


async def _ended(provider: ProviderActor, key_id: str, failure: FailureClass | None, start: float) -> None:
    await tell_bounded(provider.ref, CallEnded(key_id, failure, trio.current_time() - start))


async def complete(
    provider: ProviderActor, adapter: ProviderAdapter, intent: RequestIntent, secret: Secret, key_id: str
) -> AdapterResult:
    start = trio.current_time()
    try:
        with provider.lease() as client:
            result = await adapter.complete(client, intent, secret)
    except UpstreamError as exc:
        exc.key_id = key_id
        await _ended(provider, key_id, exc.failure, start)
        raise
    except ActorStopped as exc:
        raise provider_gone(provider.provider_id, key_id, exc) from exc
    except Exception as exc:
        log.error("adapter_bug", provider=provider.provider_id, error=f"{type(exc).__name__}: {exc}")
        raise
    await _ended(provider, key_id, None, start)
    return result


@asynccontextmanager
async def open_stream(
    provider: ProviderActor, adapter: ProviderAdapter, intent: RequestIntent, secret: Secret, key_id: str
) -> AsyncIterator[AdapterStream]:
    """The adapter's stream itself: the caller reads it directly, no forwarding task or channel."""
    start = trio.current_time()
    try:
        with provider.lease() as client:
            async with adapter.open_stream(client, intent, secret) as upstream:
                yield upstream
    except UpstreamError as exc:
        exc.key_id = key_id
        await _ended(provider, key_id, exc.failure, start)
        raise
    except ActorStopped as exc:
        raise provider_gone(provider.provider_id, key_id, exc, streaming=True) from exc
    await _ended(provider, key_id, None, start)
