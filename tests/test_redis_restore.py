"""The Redis store keeps each instance's key records and the fleet's history: an instance stopped and started
again with the same `instance_id` (a new router, a new trio clock origin) finds what it knew, as on SQLite."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from apikeyrouter import NoKeyAvailable
from apikeyrouter.config import parse_config
from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, StateQuery, TransitionRow
from apikeyrouter.errors import StoreError
from apikeyrouter.runtime import open_router
from apikeyrouter.store.backend import Batch
from apikeyrouter.store.redis_store import RedisStore
from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim
from tests.test_redis_shared import CHAT
from tests.test_store import key_record

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest

SIM = {
    "keys": [
        {"key": "sk-sim-hot", "tpm": 1, "window_s": 3600},  # no request fits: a 429 with an hour's Retry-After
        {"key": "sk-sim-flaky", "error_rate": 1.0},  # every call a 500: its breaker opens
    ]
}
SECRETS = {"hot": "sk-sim-hot", "flaky": "sk-sim-flaky"}


def config(sim_url: str, redis: str, inst: str) -> Any:
    data: dict[str, Any] = {
        "providers": [{"id": "sim", "kind": "openai", "base_url": f"{sim_url}/v1", "models": ["gpt-4o-mini"]}],
        "keys": [{"id": kid, "provider": "sim", "secret": secret} for kid, secret in SECRETS.items()],
        "routing": {"wait_for_reset": False, "max_attempts": 1},
        "breaker": {"failure_threshold": 1, "cooldown": 600.0, "max_cooldown": 600.0},
        "store": {"kind": "redis", "url": redis, "instance_id": inst, "instance_ttl": 2.0, "redis_deadline": 1.0},
        "debug": {"enabled": False},
    }
    return parse_config(data, {}, "<test>")


def sent(sim: Any) -> dict[str, int]:
    return {kid: sim.provider.stats(secret).requests for kid, secret in SECRETS.items()}


def benched(router: Any) -> bool:
    hot, flaky = router.key("hot") or {}, router.key("flaky") or {}
    return bool(hot.get("lifecycle") == "throttled" and flaky.get("breaker") == "open")


async def test_a_restarted_instance_finds_its_throttled_key_throttled_and_its_open_breaker_open(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, SIM)
        cfg = config(sim_url, redis_url, "a")
        async with open_router(cfg) as router:
            for _ in range(2):  # one request per key (one attempt each): a 429 and a 500
                with pytest.raises(Exception, match=r"429|500|503|rate"):
                    await router.route(CHAT)
            with trio.fail_after(5):  # the settlements are tells: the snapshots follow
                while not benched(router):
                    await trio.sleep(0.01)
            await router.flush_store()
        await trio.sleep(0.2)  # a later instant: the restored times are moved onto the new router's clock
        before = sent(sim)
        async with open_router(config(sim_url, redis_url, "a")) as again:
            assert benched(again)  # at once: restored before the tree started, not learned again
            with pytest.raises(NoKeyAvailable):
                await again.route(CHAT)  # neither key is tried: the provider is not asked again
            trail = await again.query_state(StateQuery("transitions", key="hot"))
            assert trail and trail[0].to_state == "throttled"
        after = sent(sim)
        nursery.cancel_scope.cancel()
    assert after == before == {"hot": 1, "flaky": 1}
    stored = redis_server.client().hgetall("akr:rec:a")
    assert {b"key/hot", b"key/flaky"} <= stored.keys()
    assert not any(secret.encode() in value for value in stored.values() for secret in SECRETS.values())


async def test_the_redis_store_moves_times_across_clocks_keeps_the_newest_rows_and_filters_them(
    redis_url: str, redis_server: RedisServer
) -> None:
    a = RedisStore(redis_url, "a", retention=5)
    assert await a.open(1_000_000.0) == {}
    record = key_record(until=160.0, now=100.0)
    tr = record.lifecycle.history[-1]
    rows: tuple[HistoryRow, ...] = (
        TransitionRow("k", tr.from_state.value, tr.to_state.value, tr.reason, tr.cause.value, tr.at, tr.until),
        BudgetRow("global", "charged", "h1", Decimal("0.3333"), 101.0),
        BudgetRow("global", "charged", "h1", Decimal("0.3333"), 101.0),  # the same twice: still two rows
    )
    decisions = tuple(
        DecisionRow(f"r{n}", f"d{n}", "k1" if n % 2 else "k2", "p", "m", "acme", "ok", 1, 0.01, 100.0 + n)
        for n in range(12)
    )
    await a.write(Batch({("key", "k"): record}, rows + decisions))
    await a.close()

    b = RedisStore(redis_url, "a", retention=5)
    restored = await b.open(1_000_115.0)  # 15 s later on the wall, trio time 0 here is wall 1_000_115
    assert restored["key", "k"].lifecycle.until == pytest.approx(45.0)
    (trail,) = await b.query(StateQuery("transitions", key="k", since=-20.0))
    assert (trail.to_state, trail.at, trail.until) == ("throttled", pytest.approx(-15.0), pytest.approx(45.0))
    assert await b.query(StateQuery("transitions", key="k", since=-10.0)) == []
    assert [r.amount for r in await b.query(StateQuery("budgets", budget="global"))] == [Decimal("0.3333")] * 2
    kept = await b.query(StateQuery("decisions", limit=100))
    assert [r.request_id for r in kept] == ["r11", "r10", "r9", "r8", "r7"]
    assert [r.request_id for r in await b.query(StateQuery("decisions", key="k1", limit=2))] == ["r11", "r9"]
    assert await RedisStore(redis_url, "b").open(0.0) == {}  # another instance's records are its own
    await b.close()


async def test_with_redis_away_the_store_keeps_the_newest_records_and_rows_and_writes_them_when_it_is_back(
    redis_url: str, redis_server: RedisServer, autojump_clock: trio.testing.MockClock
) -> None:
    redis_server.stop()
    store = RedisStore(redis_url, "a", keep_rows=3)
    assert await store.open(0.0) == {}  # degraded, not a failed start
    rows = tuple(DecisionRow(f"r{n}", f"d{n}", "k", "p", "m", None, "ok", 1, 0.01, float(n)) for n in range(5))
    for n in range(5):  # never raises: a raise would back the writer up, and it would stop every key actor
        await store.write(Batch({("key", "k"): key_record(spend=str(n))}, rows[n : n + 1]))
    assert store.failures == 1 and store.dropped_rows == 2  # tried once; then kept, without a try each time
    with pytest.raises(StoreError, match="the redis store is unavailable"):  # a 503 at /state/query
        await store.query(StateQuery("decisions"))
    redis_server.start()
    await trio.sleep(1.05)  # the next try (on trio's clock, as every timer here)
    await store.write(Batch())
    assert store.failures == 1
    restored = await RedisStore(redis_url, "a").open(0.0)
    assert restored["key", "k"].spend == Decimal("4")  # the newest value
    assert [r.request_id for r in await store.query(StateQuery("decisions"))] == ["r4", "r3", "r2"]
    await store.close()
