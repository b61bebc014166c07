"""The simulator in-process, behind an httpx transport: scenario tests on virtual time, no sockets.

`SimTransport` hands each request to `SimProvider.handle` and carries its plan out with `trio.sleep`
(latency, chunk delays, hangs), so under `autojump_clock` a scenario's waits take no real time and its
times are exact. `sim_env` is `routing_env` on it: an embedded router whose OpenAI adapters use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.config import parse_config
from apikeyrouter.observe import EventBus
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.sim import parse_sim_config
from apikeyrouter.sim.provider import Fault, Reply, SimProvider

BASE_URL = "http://sim.test/v1"


class _Events(httpx.AsyncByteStream):
    def __init__(self, sim: SimProvider, reply: Reply) -> None:
        self._sim = sim
        self._reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reply = self._reply
        for i, event in enumerate(reply.events or ()):
            if reply.cut_after and i >= reply.cut_after:
                self._sim.record_fault(reply, "cut")
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            if i and reply.chunk_delay > 0:
                await trio.sleep(reply.chunk_delay)
            yield event
        self._sim.record_completed(reply)


class SimTransport(httpx.AsyncBaseTransport):
    def __init__(self, sim: SimProvider) -> None:
        self.sim = sim

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = self.sim.handle(request.method, request.url.raw_path.decode("latin-1"), headers, body)
        if reply.fault is Fault.RESET:
            self.sim.record_fault(reply, "reset")
            raise httpx.RemoteProtocolError("connection reset by the simulator")
        try:
            if reply.latency > 0:
                await trio.sleep(reply.latency)
            if reply.fault is Fault.HANG:
                await trio.sleep_forever()
        except trio.Cancelled:
            self.sim.record_disconnect(reply)
            raise
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers]
        if reply.events is None:
            self.sim.record_completed(reply)
            return httpx.Response(reply.status, headers=raw, content=reply.body)
        return httpx.Response(reply.status, headers=raw, stream=_Events(self.sim, reply))


class SimAdapter(OpenAIAdapter):
    """The OpenAI adapter with its client on the in-process simulator."""

    def __init__(self, transport: SimTransport, **kwargs: Any) -> None:
        super().__init__(base_url=BASE_URL, **kwargs)
        self._transport = transport

    def make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, base_url=BASE_URL)


@attrs.frozen
class SimEnv:
    router: ApiKeyRouter
    sim: SimProvider
    transport: SimTransport


@asynccontextmanager
async def sim_env(
    keys: Sequence[tuple[str, str, Mapping[str, Any]]],
    *,
    sim_keys: Sequence[Mapping[str, Any]] = (),
    sim_defaults: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    events: EventBus | None = None,
) -> AsyncIterator[SimEnv]:
    """`keys`: (key id, secret the simulator sees, register_key kwargs), all on provider "openai".
    `events`: e.g. an `EventBus(wall_offset=...)`, to put the wall clock where a scenario needs it."""
    sim = SimProvider(parse_sim_config({"defaults": dict(sim_defaults or {}), "keys": list(sim_keys)}))
    transport = SimTransport(sim)
    async with ApiKeyRouter(parse_config(dict(config or {}), env={}), events=events) as router:
        await router.register_provider("openai", SimAdapter(transport))
        for key_id, secret, kwargs in keys:
            await router.register_key(secret, "openai", key_id=key_id, **kwargs)
        yield SimEnv(router, sim, transport)
