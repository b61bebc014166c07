"""A provider's client lease: a stop waits for leased calls, then cancels the ones past the grace."""

from __future__ import annotations

import httpx
import pytest
import trio

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.domain.signal import Capabilities
from apikeyrouter.errors import ActorStopped
from apikeyrouter.observe import EventBus


class _Source:
    kind = "openai"
    capabilities = Capabilities(frozenset())

    def make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()


def _provider() -> ProviderActor:
    return ProviderActor("openai", _Source(), board=SnapshotBoard(), events=EventBus())


async def test_a_call_still_leased_when_the_grace_runs_out_ends_with_actor_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    provider = _provider()
    ended: list[tuple[float, str]] = []

    async def call() -> None:
        try:
            with provider.lease() as client:
                assert isinstance(client, httpx.AsyncClient)
                await trio.sleep(100)
        except ActorStopped as exc:
            ended.append((trio.current_time(), str(exc)))

    async with trio.open_nursery() as nursery:
        grace = trio.CancelScope()

        async def run() -> None:
            with grace:
                await provider.run()

        nursery.start_soon(run)
        await trio.sleep(0.1)
        nursery.start_soon(call)
        await trio.sleep(1)
        provider.stop()  # it waits for the leased call...
        await trio.sleep(2)
        assert ended == []
        grace.cancel()  # ...until its supervisor's grace runs out: the call is cancelled and told so
    [(at, why)] = ended
    assert at == pytest.approx(3.1)
    assert "provider:openai stopped during the call" in why
    with pytest.raises(ActorStopped, match="not accepting calls"), provider.lease():
        pass  # a stopped provider refuses the next lease as it is entered


async def test_a_stop_waits_for_a_leased_call_that_finishes_and_then_closes(autojump_clock: trio.abc.Clock) -> None:
    provider = _provider()
    done: list[float] = []

    async def call() -> None:
        with provider.lease():
            await trio.sleep(5)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(provider.run)
        nursery.start_soon(call)
        await trio.sleep(1)
        provider.stop()
    assert done == [pytest.approx(5)]
    assert trio.current_time() == pytest.approx(5)  # the actor stopped once the call came back, not before
    assert provider.status == "stopped"
