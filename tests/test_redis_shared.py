"""Several routers on one real Redis, in front of the simulator: shared windows, budgets and outages.

Each scenario runs 4 (or 2) embedded routers in one trio run, each with its own `instance_id`, so the
only thing they share is the Redis server (tests/redis_server.py). Real time: the simulator and Redis
are real servers on 127.0.0.1. The rpm scenario hammers a key for a few seconds of its 60 s window:
everything admitted in that time counts against one window, so the limit must hold exactly, neither
over (the instances overspend the key) nor under (the instances starve each other).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
import trio

from apikeyrouter import BudgetExceeded, NoKeyAvailable
from apikeyrouter.config import parse_config
from apikeyrouter.runtime import ApiKeyRouter, open_router
from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def _config(sim_url: str, redis: str, inst: str, *, key: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "providers": [{"id": "sim", "kind": "openai", "base_url": f"{sim_url}/v1", "models": ["gpt-4o-mini"]}],
        "keys": [{"id": "k1", "provider": "sim", "secret": "sk-sim-shared-1", **key}],
        "routing": {"wait_for_reset": False, "max_attempts": 1},
        # A loaded CI machine can take longer than the default 0.25 s for one call; the outage test stops the
        # server (refused at once), so it needs no short deadline.
        "store": {"kind": "redis", "url": redis, "instance_id": inst, "instance_ttl": 2.0, "redis_deadline": 1.0},
        "debug": {"enabled": False},
        **(extra or {}),
    }
    return parse_config(data, {}, "<test>")


@asynccontextmanager
async def routers(configs: list[Any]) -> AsyncIterator[list[ApiKeyRouter]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_router(c)) for c in configs]


async def hammer(
    rs: list[ApiKeyRouter], n: int, on_error: Callable[[Exception], None], client: str | None = None
) -> list[Any]:
    """`n` requests spread over the routers, all at once; the responses that came back."""
    done: list[Any] = []

    async def one(router: ApiKeyRouter) -> None:
        try:
            with trio.fail_after(10):
                done.append(await router.route(CHAT, client=client))
        except (NoKeyAvailable, BudgetExceeded) as exc:
            on_error(exc)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, rs[i % len(rs)])
    return done


async def test_four_instances_hold_a_keys_global_rpm_exactly(redis_url: str) -> None:
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        configs = [_config(sim_url, redis_url, f"i{i}", key={"rpm": 120}) for i in range(4)]
        refused: list[Exception] = []
        async with routers(configs) as rs:
            # Three bursts over ~2 s of the key's 60 s window: each instance's own window would let 120
            # through (480 in all); the shared one lets exactly 120 through, whoever asks.
            served = []
            for _ in range(3):
                served += await hammer(rs, 200, refused.append)
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert sim.provider.stats("sk-sim-shared-1").requests == 120
    assert len(served) == 120 and len(refused) == 600 - 120
    assert all(isinstance(e, NoKeyAvailable) and "shared limit 120" in str(e.reasons) for e in refused)


async def test_four_instances_share_a_keys_rpd_and_count_its_month_in_actual_tokens(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        key = {"rpd": 50, "tokens_per_month": 10_000_000}
        configs = [_config(sim_url, redis_url, f"i{i}", key=key) for i in range(4)]
        refused: list[Exception] = []
        async with routers(configs) as rs:
            served = await hammer(rs, 120, refused.append)  # each instance's own day would let 50 through
            served += await hammer(rs, 40, refused.append)
            ledger = redis_server.client()
            used = sum((r.usage.input_tokens + r.usage.output_tokens for r in served), 0)
            with trio.fail_after(5):  # settled: the month counts what was used, not the worst cases held
                while sum(int(v) for v in ledger.hvals("akr:m:k1")) != used:
                    await trio.sleep(0.05)
            day = sum(int(v) for v in ledger.hvals("akr:d:k1"))
        nursery.cancel_scope.cancel()
    assert len(served) == 50 == day == sim.provider.stats("sk-sim-shared-1").requests
    assert all(isinstance(e, NoKeyAvailable) and "rpd" in str(e.reasons) for e in refused)
    assert 0 < ledger.pttl("akr:d:k1") <= 26 * 3600 * 1000  # a key no one uses leaves Redis


async def test_a_budget_hammered_by_four_instances_is_never_overspent(
    redis_url: str, redis_server: RedisServer
) -> None:
    limit = Decimal("0.0004")
    extra = {"budgets": {"global": {"limit": str(limit), "period": "day"}}}
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000, "latency_ms": 20}})
        configs = [_config(sim_url, redis_url, f"i{i}", key={}, extra=extra) for i in range(4)]
        refused: list[Exception] = []
        async with routers(configs) as rs:
            served = []
            # Each burst holds the worst case and then charges less, which frees room for the next; until
            # one burst gets nothing (the room left is below one worst case), at most 20 of them.
            for _ in range(20):
                got = await hammer(rs, 100, refused.append)
                served += got
                await trio.sleep(0.3)  # its settlements reach Redis (the writer batches them)
                if not got:
                    break  # the last settlements reach Redis (the writer batches them)
            ledger = redis_server.client().hgetall("akr:b:global")
            after = await hammer(rs, 4, refused.append)  # each instance, once more: nothing left to hold
        nursery.cancel_scope.cancel()
    spent = Decimal(int(ledger[b"spent"])) / Decimal("1e9")
    actual = sum((r.metadata.cost for r in served), Decimal(0))
    assert served and refused and not after
    assert actual <= limit  # 0 overshoot: what was really spent, by all four, within the limit
    assert spent >= actual and spent - actual < Decimal("1e-9") * len(served)  # rounded up per charge only
    assert int(ledger[b"res"]) == 0
    assert sim.provider.stats("sk-sim-shared-1").requests == len(served)
    assert all(isinstance(e, BudgetExceeded) and "budget global" in str(e) for e in refused)


async def test_redis_outage_fails_budgets_closed_and_routes_on_local_shares(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {"budgets": {"global": {"limit": "1", "period": "day"}}}
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000}})
        plain = [_config(sim_url, redis_url, f"i{i}", key={"rpm": 40}) for i in range(2)]
        budgeted = _config(sim_url, redis_url, "i-budget", key={"rpm": 40}, extra=extra)
        async with routers([*plain, budgeted]) as rs:
            a, b, c = rs
            await trio.sleep(0.6)  # a heartbeat each: three live instances
            assert a.store_status() == {
                "kind": "redis",
                "up": True,
                "instance_id": "i0",
                "live_instances": 3,
                "mode": "shared",
                "last_error": None,
                "pending_settlements": 0,
                "pending_replay": 0,
            }
            assert len(await hammer([c], 1, pytest.fail)) == 1  # the budget is held on Redis while it is up

            redis_server.stop()
            # The budgeted instance fails closed at once, with the reason.
            with pytest.raises(BudgetExceeded, match=r"redis unavailable .*hard budgets fail closed"):
                await c.route(CHAT)
            # Routing goes on, each instance on its share of the key's 40 rpm: 40 // 3 = 13.
            refused: list[Exception] = []
            served = await hammer([a], 30, refused.append)
            assert len(served) == 13
            assert all(isinstance(e, NoKeyAvailable) and "local share 1/3" in str(e.reasons) for e in refused)
            status = a.store_status()
            assert status is not None and not status["up"] and status["mode"] == "local share (1/3 of each limit)"

            redis_server.start()  # an empty Redis on the same port (no persistence)
            with trio.fail_after(5):
                while not (s := c.store_status()) or not s["up"]:
                    await trio.sleep(0.05)
            assert len(await hammer([c], 1, pytest.fail)) == 1  # budgets are held again
            status = c.store_status()
            assert status is not None and status["mode"] == "shared"
            # And settled, though the restarted Redis had forgotten the scripts (NOSCRIPT, loaded again). The
            # charge of the request before the outage, if it was still queued then, lands now too.
            ledger = redis_server.client()
            with trio.fail_after(5):
                while not int(ledger.hget("akr:b:global", "spent") or 0) or int(ledger.hget("akr:b:global", "res")):
                    await trio.sleep(0.02)
            with trio.fail_after(5):  # a's next heartbeat writes its 13 local admissions into the window
                while not (s := a.store_status()) or not s["up"] or s["pending_replay"]:
                    await trio.sleep(0.05)
            # 40 a minute across all: 13 sent by a during the outage, 1 by c since; 26 left for b.
            assert len(await hammer([b], 40, refused.append)) == 26
        nursery.cancel_scope.cancel()


async def test_one_instances_open_breaker_benches_the_key_for_all(redis_url: str, redis_server: RedisServer) -> None:
    breaker = {"failure_threshold": 1, "cooldown": 30.0}
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"error_rate": 1.0}})
        configs = [_config(sim_url, redis_url, f"i{i}", key={}, extra={"breaker": breaker}) for i in range(2)]
        async with routers(configs) as (a, b):
            with pytest.raises(Exception, match=r"500|503"):
                await a.route(CHAT)
            with trio.fail_after(5):
                while not redis_server.client().exists("akr:bench:k1"):
                    await trio.sleep(0.02)
            before = sim.provider.stats("sk-sim-shared-1").requests
            with pytest.raises(NoKeyAvailable) as refused:
                await b.route(CHAT)  # b's own breaker is closed; the shared bench refuses
            why = refused.value.reasons["k1"]
            assert ("benched until" in why or "throttled until" in why) and "breaker open" in why
            assert sim.provider.stats("sk-sim-shared-1").requests == before
            # The bench reaches b's own key actor too (pub/sub), so b's routing skips the key by itself.
            with trio.fail_after(5):
                while (b.key("k1") or {}).get("lifecycle") != "throttled":
                    await trio.sleep(0.02)
            assert "benched by instance i0 (breaker open" in str(b.transitions("k1")[-1])
            assert sim.provider.stats("sk-sim-shared-1").requests == before
        nursery.cancel_scope.cancel()


async def test_an_invalid_key_is_invalid_on_every_instance_until_put_back(redis_url: str) -> None:
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery, {"keys": [{"key": "sk-sim-shared-1", "behavior": "invalid"}]})
        configs = [_config(sim_url, redis_url, f"i{i}", key={}) for i in range(3)]
        async with routers(configs) as (a, b, c):
            with pytest.raises(Exception, match=r"401|auth"):
                await a.route(CHAT)
            with trio.fail_after(5):
                while {(r.key("k1") or {}).get("lifecycle") for r in (b, c)} != {"invalid"}:
                    await trio.sleep(0.02)
            await b.update_key_state("k1", "active", "fixed upstream")  # an operator on b puts it back
            with trio.fail_after(5):
                while {(r.key("k1") or {}).get("lifecycle") for r in (a, c)} != {"active"}:
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_a_reloaded_budget_limit_applies_on_the_shared_side_at_once(redis_url: str) -> None:
    def budget(limit: str) -> dict[str, Any]:
        return {"budgets": {"global": {"limit": limit, "period": "day"}}}

    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with open_router(_config(sim_url, redis_url, "i0", key={}, extra=budget("0.000001"))) as router:
            with pytest.raises(BudgetExceeded, match="budget global"):
                await router.route(CHAT)  # the worst case is above a millionth of a dollar
            await router.apply_config(_config(sim_url, redis_url, "i0", key={}, extra=budget("1")))
            assert len(await hammer([router], 1, pytest.fail)) == 1
        nursery.cancel_scope.cancel()


async def test_a_soft_calendar_budget_is_counted_on_redis_per_calendar_day_and_never_refuses(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A soft budget serves past its limit (the local ledger reports it) and the shared ledger counts its
    spend under the current calendar day's start, so every instance rolls it over at the same midnight."""
    extra = {"budgets": {"global": {"limit": "0.000001", "period": "day", "mode": "soft"}}}
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        configs = [_config(sim_url, redis_url, f"s{i}", key={}, extra=extra) for i in range(2)]
        async with routers(configs) as rs:
            served = await hammer(rs, 6, pytest.fail)
            await trio.sleep(0.3)  # the settlements reach Redis
            ledger = redis_server.client().hgetall("akr:b:global")
        nursery.cancel_scope.cancel()
    today = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(served) == 6
    assert int(ledger[b"p"]) == int(today.timestamp())
    spent = Decimal(int(ledger[b"spent"])) / Decimal("1e9")
    assert spent >= sum((r.metadata.cost for r in served), Decimal(0)) > Decimal("0.000001")


async def test_client_team_and_policy_budgets_are_shared_soft_ones_never_refuse(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Client, team, policy and template budgets are held on Redis like the global one: every instance counts
    against one ledger each. A soft one serves past its limit on every instance; a hard one made from the
    client template refuses on both."""
    one = "0.000001"  # below the worst case of one CHAT: a hard budget refuses the first
    extra = {
        "budgets": {"global": {"limit": "100", "period": "day"}, "client_default": {"limit": one, "period": "day"}},
        "teams": [{"id": "search", "budget": {"limit": "100", "period": "day"}}],
        "clients": [{"id": "acme", "team": "search", "budget": {"limit": one, "period": "day", "mode": "soft"}}],
        "policies": [
            {"id": "cap", "scope": "global", "kind": "cost", "effect": {"budget": {"limit": "100", "period": "day"}}}
        ],
    }
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        configs = [_config(sim_url, redis_url, f"c{i}", key={}, extra=extra) for i in range(2)]
        async with routers(configs) as rs:
            served = []
            for router in rs:
                for _ in range(4):  # soft: each served, however far past the limit
                    served.append(await router.route(CHAT, client="acme"))
                with pytest.raises(BudgetExceeded, match="client:newbie"):  # hard, from the template
                    await router.route(CHAT, client="newbie")
            ledger = redis_server.client()
            ids = ("global", "client:acme", "team:search", "policy:cap")
            cost = sum((r.metadata.cost for r in served), Decimal(0))
            with trio.fail_after(5):  # the settlements reach Redis
                while any(Decimal(int(ledger.hget(f"akr:b:{b}", "spent") or 0)) / Decimal("1e9") < cost for b in ids):
                    await trio.sleep(0.05)
            assert not ledger.hget("akr:b:client:newbie", "spent")  # refused: nothing held, nothing spent
        nursery.cancel_scope.cancel()
    assert len(served) == 8


async def test_a_client_budget_hammered_by_four_instances_is_never_overspent(
    redis_url: str, redis_server: RedisServer
) -> None:
    limit = Decimal("0.0004")
    extra = {"clients": [{"id": "acme", "budget": {"limit": str(limit), "period": "day"}}]}
    async with trio.open_nursery() as nursery:
        sim, sim_url = await start_sim(nursery, {"defaults": {"rpm": 100_000, "tpm": 100_000_000, "latency_ms": 20}})
        configs = [_config(sim_url, redis_url, f"i{i}", key={}, extra=extra) for i in range(4)]
        refused: list[Exception] = []
        async with routers(configs) as rs:
            served = []
            for _ in range(20):  # as the global one above: until a burst gets nothing
                got = await hammer(rs, 100, refused.append, client="acme")
                served += got
                await trio.sleep(0.3)
                if not got:
                    break
            ledger = redis_server.client().hgetall("akr:b:client:acme")
            after = await hammer(rs, 4, refused.append, client="acme")
            other = await hammer(rs, 4, pytest.fail, client="other")  # another client is not held by acme's
        nursery.cancel_scope.cancel()
    actual = sum((r.metadata.cost for r in served), Decimal(0))
    assert served and refused and not after and len(other) == 4
    assert actual <= limit  # each instance's own ledger would have let 4 x the limit through
    assert Decimal(int(ledger[b"spent"])) / Decimal("1e9") >= actual and int(ledger[b"res"]) == 0
    assert sim.provider.stats("sk-sim-shared-1").requests == len(served) + len(other)
    assert all(isinstance(e, BudgetExceeded) and "client:acme" in str(e) for e in refused)


async def test_with_redis_down_a_hard_client_budget_fails_closed_and_a_soft_one_serves(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {
        "clients": [
            {"id": "hard", "budget": {"limit": "10", "period": "day"}},
            {"id": "soft", "budget": {"limit": "10", "period": "day", "mode": "soft"}},
        ]
    }
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with open_router(_config(sim_url, redis_url, "i0", key={}, extra=extra)) as router:
            await router.route(CHAT, client="hard")  # held on Redis while it is up
            redis_server.stop()
            with pytest.raises(BudgetExceeded, match=r"redis unavailable .*hard budgets fail closed \(client:hard\)"):
                await router.route(CHAT, client="hard")
            await router.route(CHAT, client="soft")  # soft budgets never refuse
            await router.route(CHAT)  # no budget: routed on the key's local share
        nursery.cancel_scope.cancel()


async def test_each_instance_shows_what_all_of_them_spent_and_its_own_share_beside_it(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = {
        "budgets": {"global": {"limit": "10", "period": "day"}},
        "clients": [{"id": "acme", "budget": {"limit": "5", "period": "day"}}],
    }
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with routers([_config(sim_url, redis_url, f"i{i}", key={}, extra=extra) for i in range(2)]) as (a, b):
            spent = {"a": Decimal(0), "b": Decimal(0)}
            for name, router, n in (("a", a, 3), ("b", b, 2)):
                for _ in range(n):
                    spent[name] += (await router.route(CHAT, client="acme")).metadata.cost
            total = spent["a"] + spent["b"]
            with trio.fail_after(5):  # the settlements reach Redis
                while Decimal((await a.shared_budgets())["global"]["spent"]) < total:
                    await trio.sleep(0.05)
            for router, own in ((a, spent["a"]), (b, spent["b"])):
                view = await router.shared_budgets()
                for bid, limit in (("global", 10), ("client:acme", 5)):
                    got = view[bid]
                    assert got["scope"] == "shared" and got["reserved"] == "0"
                    assert total <= Decimal(got["spent"]) < total + Decimal("1e-8")  # nano-dollars, rounded up
                    assert Decimal(got["remaining"]) == limit - Decimal(got["spent"])
                    assert Decimal(got["local"]["spent"]) == own == Decimal(router.budgets()[bid]["spent"])
            redis_server.stop()
            down = await a.shared_budgets()
            assert down["global"]["scope"] == "local" and "onnect" in down["global"]["shared_error"]
            assert Decimal(down["global"]["spent"]) == spent["a"]
        nursery.cancel_scope.cancel()


async def test_a_keys_minute_window_leaves_redis_a_minute_after_its_last_entry(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        async with routers([_config(sim_url, redis_url, "ttl0", key={"id": "k-ttl", "rpm": 10, "tpm": 100_000})]) as rs:
            assert len(await hammer(rs, 2, pytest.fail)) == 2
            ledger = redis_server.client()
            assert ledger.zcard("akr:w:k-ttl") == 2
            for name in ("akr:w:k-ttl", "akr:wt:k-ttl"):
                assert 0 < ledger.pttl(name) <= 61_000, name  # a key no one uses costs Redis nothing
        nursery.cancel_scope.cancel()
