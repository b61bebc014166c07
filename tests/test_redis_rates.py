"""A client's and a team's rpm/tpm across several instances on one real Redis: one window for all of them.

As tests/test_redis_shared.py: embedded routers in one trio run, each its own `instance_id`, sharing only
the Redis server; real time, the simulator and Redis on 127.0.0.1. Every burst falls in one 60 s window,
so the limit must hold exactly: each instance's own window would admit the whole limit again.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import trio

from apikeyrouter import ClientRateLimited
from apikeyrouter.domain.rates import RateLimit
from apikeyrouter.domain.refusal import Refusal
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.store.redis_local import KeyLimits, LocalShares, SharedAsk, SharedGrant
from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim
from tests.test_redis_shared import CHAT, _config, routers

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest


async def burst(rs: list[ApiKeyRouter], n: int, client: str) -> tuple[list[Any], list[ClientRateLimited]]:
    """`n` requests of `client` spread over the routers at once: (served, refused as rate limited)."""
    served: list[Any] = []
    limited: list[ClientRateLimited] = []

    async def one(router: ApiKeyRouter) -> None:
        try:
            with trio.fail_after(10):
                served.append(await router.route(CHAT, client=client))
        except ClientRateLimited as exc:
            limited.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, rs[i % len(rs)])
    return served, limited


async def test_four_instances_hold_a_clients_rpm_and_a_teams_tpm_across_all_of_them(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {
        "clients": [{"id": "acme", "rpm": 12}, {"id": "beta", "team": "search"}, {"id": "gamma", "team": "search"}],
        # CHAT holds 20 max_tokens plus its input: a few thousand tokens let a handful through, once.
        "teams": [{"id": "search", "tpm": 300}],
    }
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        configs = [_config(sim_url, redis_url, f"i{i}", key={}, extra=extra) for i in range(4)]
        async with routers(configs) as rs:
            served, limited = [], []
            for _ in range(3):  # three bursts in one minute: each instance alone would admit 12 (48 in all)
                got, no = await burst(rs, 40, "acme")
                served += got
                limited += no
                await trio.sleep(0.3)
            team_served, team_limited = [], []
            for client in ("beta", "gamma"):  # one team window for both clients, on every instance
                got, no = await burst(rs, 20, client)
                team_served += got
                team_limited += no
            window = redis_server.client().zcard("akr:cw:client:acme")
        nursery.cancel_scope.cancel()
    assert len(served) == 12 == window and len(limited) == 120 - 12
    assert all(e.scope == "client:acme" and e.retry_at is not None for e in limited)
    assert any("across instances" in str(e) for e in limited)  # refused by the shared window, not only locally
    # Every instance's own window would admit 300 worst-case tokens each; together they stay within 300.
    assert team_served and team_limited and sum(r.usage.total_tokens for r in team_served) <= 300
    assert all(e.scope == "team:search" for e in team_limited)
    assert sim.provider.stats("sk-sim-shared-1").requests == 12 + len(team_served)


async def test_with_redis_down_a_client_gets_its_local_share_and_the_window_is_shared_again_after(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {"clients": [{"id": "acme", "rpm": 20}]}
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        async with routers([_config(sim_url, redis_url, f"i{i}", key={}, extra=extra) for i in range(2)]) as (a, b):
            await trio.sleep(0.6)  # a heartbeat each: two live instances
            redis_server.stop()
            served, limited = await burst([a], 30, "acme")
            assert len(served) == 10  # 20 // 2 live instances
            # Refused by the share (some, all at once, by this instance's own full window, whose entries the
            # share's refusals give back a moment later).
            assert all(e.scope == "client:acme" for e in limited) and any("local share 1/2" in str(e) for e in limited)

            redis_server.start()  # empty (no persistence): a's heartbeat replays its 10 into acme's window
            with trio.fail_after(5):
                while not (s := a.store_status()) or not s["up"] or s["pending_replay"]:
                    await trio.sleep(0.05)
            with trio.fail_after(5):
                while not (s := b.store_status()) or not s["up"]:
                    await trio.sleep(0.05)
            # Shared again: b (which sent nothing, its own window empty) gets what is left of the 20.
            served, limited = await burst([b], 30, "acme")
            assert len(served) == 10 and any("across instances" in str(e) for e in limited)
        nursery.cancel_scope.cancel()


async def test_a_settled_request_stays_in_the_shared_window_with_its_actual_tokens(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {"clients": [{"id": "acme", "rpm": 5}]}
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000}})
        async with routers([_config(sim_url, redis_url, f"r{i}", key={}, extra=extra) for i in range(2)]) as rs:
            served, _ = await burst(rs, 3, "acme")
            ledger = redis_server.client()
            with trio.fail_after(5):  # the settlements reach Redis: entries stay, with their actual tokens
                while int(ledger.get("akr:cwt:client:acme") or 0) != sum(r.usage.total_tokens for r in served):
                    await trio.sleep(0.05)
            assert ledger.zcard("akr:cw:client:acme") == 3
            assert 0 < ledger.pttl("akr:cw:client:acme") <= 61_000  # an idle client's window leaves Redis
        nursery.cancel_scope.cancel()


async def test_failed_attempts_leave_no_entry_in_the_clients_shared_window(
    redis_url: str, redis_server: RedisServer
) -> None:
    """An attempt that fails upstream frees its budget hold, and the budget actor's own client window gives
    its entry back with it: the shared window must too, or every failover (and every 5xx) would count
    against the client's rpm on Redis and not on one instance alone."""
    extra = {"clients": [{"id": "acme", "rpm": 50}]}
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "error_rate": 1.0}})
        async with routers([_config(sim_url, redis_url, "f0", key={}, extra=extra)]) as (router,):
            for _ in range(3):
                with trio.fail_after(10):
                    try:
                        await router.route(CHAT, client="acme")
                    except Exception as exc:  # the simulator answers 500: the request fails upstream
                        assert not isinstance(exc, ClientRateLimited)
            ledger = redis_server.client()
            with trio.fail_after(5):  # the settlements reach Redis: the estimates leave the token count
                while int(ledger.get("akr:cwt:client:acme") or 0) != 0:
                    await trio.sleep(0.05)
            assert ledger.zcard("akr:cw:client:acme") == 0
        nursery.cancel_scope.cancel()


async def test_on_the_local_share_a_failed_attempt_gives_the_clients_entry_back() -> None:
    """Redis away: the same rule on this instance's share of the client's window."""
    shares = LocalShares()
    acme = (RateLimit("client:acme", rpm=2),)
    ask = SharedAsk("k1", "req-1", 10, KeyLimits(), 30.0, Decimal("0.01"), scopes=acme)
    failed = shares.grant(ask, "req-1:1", 1)
    served = shares.grant(ask, "req-1:2", 1)
    assert isinstance(failed, SharedGrant) and isinstance(served, SharedGrant)
    assert isinstance(shares.grant(ask, "req-2:1", 1), Refusal)  # rpm 2: the window is full
    shares.finish(served, 25)
    shares.finish(failed, 0, charged=False)  # failed upstream: its budget hold freed
    assert isinstance(shares.grant(ask, "req-2:2", 1), SharedGrant)
