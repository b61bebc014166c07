"""The dashboard: who gets in (sessions, cookie flags, CSRF), what its stream does with a slow page, and
that neither the page nor the stream ever shows a secret."""

from __future__ import annotations

import signal
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.lifecycle import Cause, KeyState, Transition
from apikeyrouter.observe import KeyTransitioned, RequestAttempted
from apikeyrouter.proxy import ProxyApp, serve_proxy
from apikeyrouter.proxy.dashboard import Dashboard
from apikeyrouter.proxy.dashboard_auth import COOKIE_NAME, Sessions, cookie_value
from apikeyrouter.proxy.dashboard_model import RequestRates, project_budget, rates_json
from apikeyrouter.secret import Secret
from tests.proxy_fakes import ADMIN_TOKEN, FakeRouter, running_proxy
from tests.routing_env import chat, routing_env
from tests.serve_env import ADMIN as SERVE_ADMIN
from tests.serve_env import serve_env

LOGIN = "token=" + ADMIN_TOKEN


def origin(proxy_url: str) -> dict[str, str]:
    return {"origin": proxy_url, "content-type": "application/x-www-form-urlencoded"}


def transition(key: str, to: KeyState, at: float) -> KeyTransitioned:
    return KeyTransitioned(key, Transition(KeyState.ACTIVE, to, "answered 429", at, Cause.FAILURE, at + 30))


async def log_in(http: httpx.AsyncClient, url: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    return await http.post("/dashboard/login", content=f"token={token}", headers=origin(url))


# -- who gets in ---------------------------------------------------------------------------------------


async def test_without_a_session_the_dashboard_is_the_login_form_and_its_data_is_refused() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        page = await http.get("/dashboard")
        state = await http.get("/dashboard/state")
        events = await http.get("/dashboard/events")
        bearer = await http.get("/dashboard/state", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'action="/dashboard/login"' in page.text and 'name="token"' in page.text
    assert "dashboard.js" not in page.text  # the live page is not served to strangers
    for refused in (state, events, bearer):  # a bearer token is not a session: the dashboard only takes the form
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "login"


async def test_a_wrong_token_is_401_and_the_form_again_with_no_cookie() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        wrong = await http.post("/dashboard/login", content="token=admin-guess", headers=origin(proxy.url))
        empty = await http.post("/dashboard/login", content="", headers=origin(proxy.url))
        after = await http.get("/dashboard/state")
    for answer in (wrong, empty):
        assert answer.status_code == 401
        assert "set-cookie" not in answer.headers
        assert 'name="token"' in answer.text and "not the admin token" in answer.text
        assert "admin-guess" not in answer.text  # what was typed is not echoed back
    assert after.status_code == 401


async def test_login_sets_an_httponly_samesite_strict_path_scoped_session_cookie_never_the_token() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        login = await log_in(http, proxy.url)
        page = await http.get("/dashboard")
        state = await http.get("/dashboard/state")
    assert login.status_code == 303 and login.headers["location"] == "/dashboard"
    cookie = login.headers["set-cookie"]
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith(f"{COOKIE_NAME}=")
    assert {"HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=28800"} <= set(attributes)
    session_id = cookie_value(cookie.encode())
    assert session_id and len(session_id) >= 40 and ADMIN_TOKEN not in str(login.headers)
    assert page.status_code == 200 and "/dashboard/static/dashboard.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert state.status_code == 200 and {"keys", "burndown", "budgets", "rates", "decisions"} <= set(state.json())


async def test_login_and_logout_need_an_origin_naming_this_host() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        form = {"content-type": "application/x-www-form-urlencoded"}
        no_origin = await http.post("/dashboard/login", content=LOGIN, headers=form)
        cross_site = await http.post("/dashboard/login", content=LOGIN, headers={**form, "origin": "https://evil.example"})
        null = await http.post("/dashboard/login", content=LOGIN, headers={**form, "origin": "null"})
        assert [r.status_code for r in (no_origin, cross_site, null)] == [403, 403, 403]
        assert not any("set-cookie" in r.headers for r in (no_origin, cross_site, null))

        await log_in(http, proxy.url)
        forged = await http.post("/dashboard/logout", headers={"origin": "https://evil.example"})
        still_in = await http.get("/dashboard/state")
        logout = await http.post("/dashboard/logout", headers={"origin": proxy.url})
        assert "Max-Age=0" in logout.headers["set-cookie"]
        http.cookies.clear()
        old_cookie = forged.request.headers["cookie"]
        out = await http.get("/dashboard/state", headers={"cookie": old_cookie})  # dead server-side too
    assert forged.status_code == 403 and still_in.status_code == 200
    assert logout.status_code == 303 and out.status_code == 401


async def test_the_dashboard_is_disabled_without_an_admin_token() -> None:
    async with running_proxy(FakeRouter(), admin=False) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        page = await http.get("/dashboard")
        login = await log_in(http, proxy.url)
        state = await http.get("/dashboard/state")
    assert page.status_code == 403 and "no admin token is configured" in page.text
    assert login.status_code == 403 and "set-cookie" not in login.headers
    assert state.status_code == 403


async def test_sessions_expire_and_the_stream_says_so(autojump_clock: trio.abc.Clock) -> None:
    sessions = Sessions(ttl=60.0)
    start = trio.current_time()
    session = sessions.open(start)
    assert sessions.get(session.id, start + 59.9) == session
    assert sessions.get(session.id, start + 60.0) is None  # fixed from login: using it does not extend it

    router = FakeRouter()
    dashboard = Dashboard(router, Secret(ADMIN_TOKEN), sessions=Sessions(ttl=10.0))
    login = dashboard.login(LOGIN.encode(), b"http://dash.test", b"dash.test", trio.current_time())
    cookie = dict(login.headers)[b"set-cookie"].split(b";")[0]
    assert b"Max-Age=10" in dict(login.headers)[b"set-cookie"]
    opened = trio.current_time()
    kinds = []
    with trio.fail_after(60):  # virtual seconds: a stream that ignored the expiry would run on
        async for frame in dashboard.frames(cookie):
            kinds.append(frame.split(b"event: ")[-1].split(b"\n")[0])
    assert kinds[-1] == b"expired" and kinds.count(b"snapshot") >= 9
    assert 10.0 <= trio.current_time() - opened <= 11.0
    assert dashboard.check(cookie, trio.current_time()) is not None
    assert router.events.subscriber_count == 0  # the stream's subscription ended with it


# -- the stream ----------------------------------------------------------------------------------------


async def test_a_slow_page_is_dropped_and_publishing_never_waits_for_it(autojump_clock: trio.abc.Clock) -> None:
    router = FakeRouter()
    dashboard = Dashboard(router, Secret(ADMIN_TOKEN), capacity=8)
    session = dashboard.sessions.open(trio.current_time())
    frames = dashboard.frames(f"{COOKIE_NAME}={session.id}".encode())
    first = await frames.__anext__()
    assert b"event: snapshot" in first and router.events.subscriber_count == 1

    # The page reads nothing while the router publishes a burst: publish is synchronous and returns
    # every time; the page's queue (8) overflows and the bus lets the page go.
    for i in range(50):
        router.events.publish(transition(f"key-{i}", KeyState.THROTTLED, trio.current_time()))
    assert router.events.dropped_subscribers == 1 and router.events.subscriber_count == 0

    rest = [frame async for frame in frames]
    kinds = [frame.split(b"\n")[0] for frame in rest]
    assert kinds == [b"event: bus"] * 8 + [b"event: dropped"]  # what was queued, then why it ends
    assert b'"key":"key-0"' in rest[0] and b"could not keep up" in rest[-1]


async def test_bus_events_reach_the_page_at_once_and_the_snapshot_follows(autojump_clock: trio.abc.Clock) -> None:
    router = FakeRouter()
    await router.register_key("sk-fake-0123456789abcdef", "openai", key_id="oa-1")
    dashboard = Dashboard(router, Secret(ADMIN_TOKEN), interval=1.0)
    session = dashboard.sessions.open(trio.current_time())
    received: list[tuple[float, bytes]] = []

    async def page() -> None:
        async for frame in dashboard.frames(f"{COOKIE_NAME}={session.id}".encode()):
            received.append((trio.current_time(), frame))
            if len(received) == 4:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(page)
        await trio.sleep(0.5)
        router.events.publish(transition("oa-1", KeyState.THROTTLED, trio.current_time()))
    start = received[0][0]
    times = [round(t - start, 2) for t, _ in received]
    kinds = [frame.split(b"\n")[0] for _, frame in received]
    assert times == [0.0, 0.5, 0.6, 1.6]  # the event at once, a snapshot 0.1 s later, then the beat again
    assert kinds == [b"retry: 2000", b"event: bus", b"event: snapshot", b"event: snapshot"]
    assert b'"to":"throttled"' in received[1][1] and b'"lifecycle":"active"' in received[0][1]


# -- what the page shows, and never shows ---------------------------------------------------------------


def test_rates_count_attempts_per_second_by_outcome() -> None:
    rates = RequestRates()
    for at, failure in [(100.2, None), (100.7, None), (101.1, FailureClass.RATE_LIMITED), (103.5, None)]:
        rates.record(RequestAttempted("r", "k", "p", 1, "d", failure, 0.01, at))
    series = rates.series(103.9, seconds=5)
    assert series == [(99, {}), (100, {"success": 2}), (101, {"rate_limited": 1}), (102, {}), (103, {"success": 1})]
    view = rates_json(series, wall_offset=0.0)
    assert view["outcomes"] == ["rate_limited", "success"]
    assert view["series"] == [[0, 0], [0, 2], [1, 0], [0, 0], [0, 1]]
    assert view["errors_by_class"] == {"rate_limited": 1} and view["error_rate"] == 0.25


def test_a_budget_is_projected_from_its_spend_rate_with_growing_confidence() -> None:
    # $0.10 a minute, $3 left: 30 minutes.
    samples = [(float(t), 0.10 * t / 60) for t in range(0, 181, 10)]
    projection = project_budget(samples, remaining=3.0, now=180.0)
    assert projection.seconds is not None and abs(projection.seconds - 1800) < 1e-6
    assert projection.confidence == 1.0 and abs(projection.per_hour - 6.0) < 1e-9
    early = project_budget(samples[:4], remaining=3.0, now=30.0)  # 30 s, 3 moves: an early, unsure guess
    assert early.seconds is not None and 0 < early.confidence < 0.2
    idle = project_budget([(0.0, 1.0), (60.0, 1.0)], remaining=3.0, now=60.0)
    assert idle.seconds is None  # nothing spent: no projection, not "never"
    reset = project_budget([(0.0, 5.0), (10.0, 0.0), (20.0, 0.5)], remaining=9.5, now=20.0)
    assert reset.seconds == 190.0  # a period reset (a drop) restarts the window


SECRET_MARKER = "ZQXJ7K2M9P4R8T6V"


async def test_no_secret_in_the_page_the_state_or_the_stream() -> None:
    secrets = {
        "good": f"sk-good-{SECRET_MARKER}0001",
        "bad": f"sk-bad-{SECRET_MARKER}0002",  # the sim answers 401 echoing a masked form of it
    }
    async with (
        routing_env(
            [("good", secrets["good"], {}), ("bad", secrets["bad"], {"metadata": {"quality": "premium"}})],
            sim_keys=[{"key": secrets["bad"], "behavior": "invalid"}],
            config={"routing": {"objective": "quality"}, "budgets": {"global": {"limit": "5.00", "period": "day"}}},
        ) as env,
        trio.open_nursery() as nursery,
    ):
        app = ProxyApp(env.router, admin_token=Secret(ADMIN_TOKEN), log_requests=False)
        shutdown = trio.Event()
        listening = await nursery.start(partial(serve_proxy, app, "127.0.0.1", 0, shutdown_trigger=shutdown.wait))
        url = listening.url
        for i in range(3):
            await env.router.route(chat(f"hello {i}"))
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await log_in(http, url)).status_code == 303
            shown = [(await http.get(path)).text for path in ("/dashboard", "/dashboard/state")]
            stream = b""
            async with http.stream("GET", "/dashboard/events") as events:
                with trio.move_on_after(2.5):
                    async for chunk in events.aiter_bytes():
                        stream += chunk
        shutdown.set()
    state = shown[1]
    assert '"lifecycle":"invalid"' in state and '"id":"global"' in state  # the page has what it should
    assert b"event: snapshot" in stream and b'"to":"invalid"' in stream
    for text in [*shown, stream.decode()]:
        assert SECRET_MARKER not in text and ADMIN_TOKEN not in text
        assert secrets["bad"][:8] + "****" not in text


class BudgetedRouter(FakeRouter):
    def budgets(self) -> dict[str, Any]:
        return {"team": {"limit": "10.00", "spent": "2.50", "reserved": "0.25"}}


async def test_budget_money_in_the_snapshot_is_exact() -> None:
    dashboard = Dashboard(BudgetedRouter(), Secret(ADMIN_TOKEN))
    [budget] = dashboard.snapshot(trio.current_time())["budgets"]
    assert (budget["remaining"], budget["used_pct"]) == (str(Decimal("7.25")), 27.5)


async def test_an_open_dashboard_does_not_hold_up_a_graceful_shutdown(tmp_path: Path) -> None:
    async with (
        serve_env(tmp_path, [("k1", "DASH_K1", "")], secrets={"DASH_K1": "sk-sim-dash-k1-0123456789"}) as served,
        httpx.AsyncClient(base_url=served.url) as http,
    ):
        assert (await log_in(http, served.url, SERVE_ADMIN)).status_code == 303
        received = b""
        stopping: float | None = None
        async with http.stream("GET", "/dashboard/events") as events:
            with trio.fail_after(8):  # the grace period is 5 s: the stream must end well before it
                async for chunk in events.aiter_bytes():
                    received += chunk
                    if stopping is None and b"event: snapshot" in received:
                        served.signal(signal.SIGTERM)  # with the page open and streaming
                        stopping = trio.current_time()
        assert stopping is not None
        with trio.fail_after(4):
            await served.process.wait()
        took = trio.current_time() - stopping
    assert received.rstrip().endswith(b'"message":"the server is shutting down"}')
    assert served.process.returncode == 0 and took < 4
