"""A slow Redis is not a Redis that is down, and an instance that falls back counts what it admitted already.

Both scenarios make the trouble with the real server of tests/redis_server.py: `CLIENT PAUSE` holds
every client's commands (the reserve scripts included) for a while, then runs them; stopping the server
refuses connections. Two embedded routers share a key of 4 rpm (a local share of 2 each).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from apikeyrouter import NoKeyAvailable
from apikeyrouter.config import parse_config
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.store.redis_link import RedisLink, StoreUnavailable
from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim
from tests.test_redis_shared import hammer, routers

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest


def _config(sim_url: str, redis: str, inst: str, deadline: float, ttl: float) -> Any:
    data: dict[str, Any] = {
        "providers": [{"id": "sim", "kind": "openai", "base_url": f"{sim_url}/v1", "models": ["gpt-4o-mini"]}],
        "keys": [{"id": "k1", "provider": "sim", "secret": "sk-sim-slow-1", "rpm": 4}],
        "routing": {"wait_for_reset": False, "max_attempts": 1},
        "store": {"kind": "redis", "url": redis, "instance_id": inst, "instance_ttl": ttl, "redis_deadline": deadline},
        "debug": {"enabled": False},
    }
    return parse_config(data, {}, "<test>")


async def _served(rs: list[ApiKeyRouter], n: int, refused: list[Exception]) -> int:
    return len(await hammer(rs, n, refused.append))


async def test_a_reserve_that_times_out_is_refused_not_admitted_on_the_local_share(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        # A long TTL: heartbeats every 7.5 s, so none falls inside the pause (a heartbeat that times out
        # would mark Redis down, which is right, and not what this test is about).
        async with routers([_config(sim_url, redis_url, f"slow{i}", 0.2, 30.0) for i in range(2)]) as (a, b):
            refused: list[Exception] = []
            assert await _served([a], 4, refused) == 4  # the shared window is full
            pause = ("CLIENT", "PAUSE", "1500", "ALL")  # every client's commands wait 1.5 s, then run
            await trio.to_thread.run_sync(lambda: redis_server.client().execute_command(*pause))
            # b's reserves wait in the paused Redis past their deadline. Redis runs them after the pause (and
            # refuses them: the window is full), so b must not admit them on its share of 2 meanwhile.
            assert await _served([b], 3, refused) == 0
            assert len(refused) == 3
            assert all(isinstance(e, NoKeyAvailable) for e in refused)
            assert all("redis did not answer" in str(e.reasons) for e in refused)
            status = b.store_status()
            assert status is not None and status["up"] and status["mode"] == "shared"  # slow, not down
            await trio.sleep(1.5)  # the pause is over
            refused.clear()
            assert await _served([a, b], 4, refused) == 0
            assert all(isinstance(e, NoKeyAvailable) for e in refused)
        nursery.cancel_scope.cancel()
    assert sim.provider.stats("sk-sim-slow-1").requests == 4


async def test_an_instance_falling_back_counts_what_it_admitted_through_redis_this_minute(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        async with routers([_config(sim_url, redis_url, f"fall{i}", 1.0, 2.0) for i in range(2)]) as (a, b):
            await trio.sleep(0.6)  # a heartbeat each: both count 2 live instances
            refused: list[Exception] = []
            assert await _served([a], 2, refused) == 2  # through Redis: half the key's minute
            redis_server.stop()
            try:
                # a's share is 4 // 2 = 2, and it sent 2 this minute already: none more. b's share is untouched.
                assert await _served([a], 3, refused) == 0
                full = "rpm limit 2 reached (2 used) (local share 1/2"
                assert len(refused) == 3 and any(full in str(e.reasons) for e in refused)
                assert await _served([b], 3, refused) == 2
                status = a.store_status()
                assert status is not None and not status["up"]
            finally:
                redis_server.start()
        nursery.cancel_scope.cancel()
    assert sim.provider.stats("sk-sim-slow-1").requests == 4  # the key's rpm, though Redis went away mid-minute


async def test_the_deadline_of_a_redis_call_starts_when_it_has_a_thread_not_while_it_queues(redis_url: str) -> None:
    link = RedisLink(redis_url, deadline=0.2, max_threads=1)
    try:
        async with trio.open_nursery() as nursery:
            # The only worker thread is taken (as by a burst of calls, or a loaded CPU) for 3 deadlines.
            held = trio.Event()

            async def hold() -> None:
                async with link._limiter:
                    held.set()
                    await trio.sleep(0.6)

            nursery.start_soon(hold)
            await held.wait()
            start = trio.current_time()
            assert await link.share("k-queued", "life", "revoked", 0)  # a request-path call, queued
            assert trio.current_time() - start >= 0.6  # it waited for the thread, then Redis answered in time
            assert link.up and link.failures == 0
            # The heartbeat's probe has a thread of its own: it never queues behind the request path.
            async with link._limiter:
                await link.heartbeat("queued", 1, fresh=True)
        assert link.up and link.failures == 0
    finally:
        link.close()


async def test_a_slow_reply_fails_the_call_and_leaves_redis_up_a_slow_heartbeat_marks_it_down(
    redis_url: str, redis_server: RedisServer
) -> None:
    link = RedisLink(redis_url, deadline=0.2)
    try:
        await link.heartbeat("slowlink", 2000, fresh=True)
        pause = ("CLIENT", "PAUSE", "600", "ALL")
        await trio.to_thread.run_sync(lambda: redis_server.client().execute_command(*pause))
        with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s") as slow:
            await link.reserve(["slowlink", "r1", "k-slow", "1", "-1", "-1", "-1", "1000", "0", "0", "-1", "-1", "0"])
        assert slow.value.maybe_applied and link.up and link.slow == 1  # one slow reply: not an outage
        with pytest.raises(StoreUnavailable):
            await link.heartbeat("slowlink", 2000, fresh=False)
        assert not link.up and link.last_error == "no answer within 0.2 s"  # the probe decides
        await trio.sleep(0.6)
        await link.heartbeat("slowlink", 1, fresh=False)
        assert link.up and link.last_error is None
    finally:
        link.close()


@pytest.fixture(autouse=True)
def _fresh_redis(redis_server: RedisServer) -> None:
    redis_server.client().flushall()  # the session's server: earlier tests' windows of k1 are not this one's
