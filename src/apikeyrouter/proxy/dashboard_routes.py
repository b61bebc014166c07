"""The dashboard's HTTP handlers: the only part of it that speaks HTTP, kept thin on purpose.

Each handler reads what `proxy/dashboard.py` needs (a cookie, an Origin and Host, a small form body) and
sends what it returns: a `Response`, or the frames of `Dashboard.frames` until the page leaves. Moving the
proxy to another server means re-pointing these few functions; the dashboard itself does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing

import trio

from apikeyrouter.proxy._http import BodyTooLarge, ClientGone, Exchange, HTTPError, MalformedBody, send_response
from apikeyrouter.proxy.dashboard import ASSETS, SSE_HEADERS, Dashboard, Response

__all__ = ["dashboard_routes"]

Handler = Callable[[Exchange, str], Awaitable[None]]

FORM_BYTES = 4096  # the login form: one token
SEND_S = 10.0  # a page that takes longer than this to take one frame is let go


def dashboard_routes(dashboard: Dashboard, body_deadline: float) -> dict[str, dict[str, Handler]]:
    """The dashboard's routes by path and method, for the app's routing table."""

    async def page(ex: Exchange, _: str) -> None:
        await _send(ex, dashboard.page(ex.request.cookie, trio.current_time()))

    async def asset(ex: Exchange, _: str) -> None:
        answer = dashboard.asset(ex.request.path.rsplit("/", 1)[-1])
        assert answer is not None  # routed only for the names in ASSETS
        await _send(ex, answer)

    async def login(ex: Exchange, _: str) -> None:
        try:
            with trio.fail_after(body_deadline):
                body = await ex.request.http.read_body(FORM_BYTES)
        except trio.TooSlowError:
            raise HTTPError(408, "the request body did not arrive in time", code="request_timeout") from None
        except BodyTooLarge:
            raise HTTPError(413, f"a login form is at most {FORM_BYTES} bytes", code="request_too_large") from None
        except MalformedBody as exc:
            raise HTTPError(400, f"malformed request body: {exc}") from None
        r = ex.request
        await _send(ex, dashboard.login(body, r.origin, r.host, trio.current_time()))

    async def logout(ex: Exchange, _: str) -> None:
        r = ex.request
        await _send(ex, dashboard.logout(r.cookie, r.origin, r.host))

    async def state(ex: Exchange, _: str) -> None:
        if dashboard.check(ex.request.cookie, trio.current_time()) is None:
            await dashboard.refresh(trio.current_time())  # the fleet's budgets, with a Redis store
        await _send(ex, dashboard.state(ex.request.cookie, trio.current_time()))

    async def events(ex: Exchange, _: str) -> None:
        denied = dashboard.check(ex.request.cookie, trio.current_time())
        if denied is not None:
            await _send(ex, denied)
            return
        await _stream(ex, dashboard)

    return {
        "/dashboard": {"GET": page},
        "/dashboard/login": {"POST": login},
        "/dashboard/logout": {"POST": logout},
        "/dashboard/state": {"GET": state},
        "/dashboard/events": {"GET": events},
        **{f"/dashboard/static/{name}": {"GET": asset} for name in ASSETS},
    }


async def _send(ex: Exchange, answer: Response) -> None:
    ex.status = answer.status
    ex.started = True
    head = [*answer.headers, (b"x-request-id", ex.request_id.encode())]
    await send_response(ex.response, answer.status, answer.body, head)


async def _stream(ex: Exchange, dashboard: Dashboard) -> None:
    """Send the SSE frames until the client leaves (the server then cancels this handler) or the stream ends
    (see `Dashboard.frames`)."""
    headers = [*SSE_HEADERS, (b"x-request-id", ex.request_id.encode())]
    # An event stream has no end but its page leaving: that is answered (200), not a client that left (499).
    ex.endless = True
    ex.status = 200
    await ex.response.start(200, headers)
    ex.started = True
    try:
        async with aclosing(dashboard.frames(ex.request.cookie)) as frames:
            async for frame in frames:
                # A page that stops reading is let go, not waited for (its bus queue drops it as well).
                with trio.move_on_after(SEND_S) as stuck:
                    await ex.response.send(frame)
                if stuck.cancelled_caught:
                    return  # the answer is unfinished: the server closes the connection
        await ex.response.end()
    except ClientGone:
        ex.disconnected = True
