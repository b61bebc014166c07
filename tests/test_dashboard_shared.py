"""The dashboard's budgets with several instances on one Redis: the fleet's spend, as `GET /budgets` shows it,
asked for at the snapshot cadence (never per request, never per page), and saying so when Redis is away."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import trio

from apikeyrouter.proxy.dashboard import Dashboard
from apikeyrouter.secret import Secret
from tests.proxy_fakes import ADMIN_TOKEN, FakeRouter, running_proxy
from tests.redis_server import RedisServer, redis_server, redis_url
from tests.sim_helpers import start_sim
from tests.test_dashboard import log_in
from tests.test_redis_shared import CHAT, _config, routers

__all__ = ["redis_server", "redis_url"]  # the fixtures, imported for pytest

BUDGETS = {"budgets": {"global": {"limit": "10", "period": "day"}}}


def global_budget(snapshot: dict[str, Any]) -> dict[str, Any]:
    (found,) = [b for b in snapshot["budgets"] if b["id"] == "global"]
    return found


async def test_the_dashboard_shows_what_every_instance_spent_and_says_when_redis_is_away(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with trio.open_nursery() as nursery:
        _, sim_url = await start_sim(nursery)
        configs = [_config(sim_url, redis_url, f"i{i}", key={}, extra=BUDGETS) for i in range(2)]
        async with routers(configs) as (a, b):
            spent = {"a": Decimal(0), "b": Decimal(0)}
            for name, router, n in (("a", a, 3), ("b", b, 2)):
                for _ in range(n):
                    spent[name] += (await router.route(CHAT)).metadata.cost
            total = spent["a"] + spent["b"]
            with trio.fail_after(5):  # the settlements reach Redis
                while Decimal((await a.shared_budgets())["global"]["spent"]) < total:
                    await trio.sleep(0.05)
            async with running_proxy(a) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:  # type: ignore[arg-type]
                assert (await log_in(http, proxy.url)).status_code == 303
                shown = global_budget((await http.get("/dashboard/state")).json())
                assert shown["scope"] == "shared" and shown["shared_error"] is None
                assert total <= Decimal(shown["spent"]) < total + Decimal("1e-8")  # both instances' spend
                assert Decimal(shown["local_spent"]) == spent["a"]  # this instance's own, beside it
                assert Decimal(shown["remaining"]) == 10 - Decimal(shown["spent"])

                redis_server.stop()
                try:
                    await trio.sleep(proxy.app.dashboard.interval)  # the next snapshot asks again
                    async with http.stream("GET", "/dashboard/events") as stream:  # the SSE stream says so too
                        lines = stream.aiter_lines()
                        async for line in lines:
                            if line == "event: snapshot":
                                break
                        data = await lines.__anext__()
                    away = global_budget(httpx.Response(200, content=data.removeprefix("data: ")).json())
                    assert away["scope"] == "local" and "onnect" in away["shared_error"]
                    assert Decimal(away["spent"]) == spent["a"]  # what this instance knows on its own
                finally:
                    redis_server.start()
        nursery.cancel_scope.cancel()


class CountingRouter(FakeRouter):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def budgets(self) -> dict[str, Any]:
        return {"global": {"limit": "10", "spent": "1", "reserved": "0"}}

    async def shared_budgets(self) -> dict[str, Any]:
        self.asked += 1
        await trio.sleep(0.01)  # a round trip
        return {"global": {"limit": "10", "spent": "4", "reserved": "0", "scope": "shared", "local": {"spent": "1"}}}


async def test_the_fleet_is_asked_once_per_snapshot_interval_however_many_pages_watch(
    autojump_clock: object,
) -> None:
    router = CountingRouter()
    dashboard = Dashboard(router, Secret(ADMIN_TOKEN), interval=1.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # five pages at once
            nursery.start_soon(dashboard.refresh, trio.current_time())
    assert router.asked == 1
    shown = global_budget(dashboard.snapshot(trio.current_time()))
    assert (shown["spent"], shown["local_spent"], shown["scope"]) == ("4", "1", "shared")
    await trio.sleep(0.5)
    await dashboard.refresh(trio.current_time())
    assert router.asked == 1  # still fresh
    await trio.sleep(0.6)
    await dashboard.refresh(trio.current_time())
    assert router.asked == 2
    await trio.sleep(10)  # nobody asked for a while: the figures are stale, the page shows its own
    stale = global_budget(dashboard.snapshot(trio.current_time()))
    assert (stale["spent"], stale["scope"]) == ("1", "local")
