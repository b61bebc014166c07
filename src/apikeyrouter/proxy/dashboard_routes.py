"""The dashboard's HTTP handlers: the only part of it that speaks ASGI, kept thin on purpose.

Each handler reads what `proxy/dashboard.py` needs (a cookie, an Origin and Host, a small form body) and
sends what it returns: a `Response`, or the frames of `Dashboard.frames` until the page leaves. Moving the
proxy to another server means re-pointing these few functions; the dashboard itself does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing

import trio

from apikeyrouter.proxy._http import (
    BodyTooLarge,
    Exchange,
    HTTPError,
    Receive,
    Send,
    read_body,
    send_response,
    watch_disconnect,
)
from apikeyrouter.proxy.dashboard import ASSETS, SSE_HEADERS, Dashboard, Response

__all__ = ["dashboard_routes"]

Handler = Callable[[Exchange, Receive, Send, str], Awaitable[None]]

FORM_BYTES = 4096  # the login form: one token
SEND_S = 10.0  # a page that takes longer than this to take one frame is let go


def dashboard_routes(dashboard: Dashboard, body_deadline: float) -> dict[str, dict[str, Handler]]:
    """The dashboard's routes by path and method, for the app's routing table."""

    async def page(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        await _send(ex, send, dashboard.page(ex.request.cookie, trio.current_time()))

    async def asset(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        answer = dashboard.asset(ex.request.path.rsplit("/", 1)[-1])
        assert answer is not None  # routed only for the names in ASSETS
        await _send(ex, send, answer)

    async def login(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        try:
            with trio.fail_after(body_deadline):
                body = await read_body(receive, FORM_BYTES, ex.request.content_length)
        except trio.TooSlowError:
            raise HTTPError(408, "the request body did not arrive in time", code="request_timeout") from None
        except BodyTooLarge:
            raise HTTPError(413, f"a login form is at most {FORM_BYTES} bytes", code="request_too_large") from None
        r = ex.request
        await _send(ex, send, dashboard.login(body, r.origin, r.host, trio.current_time()))

    async def logout(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        r = ex.request
        await _send(ex, send, dashboard.logout(r.cookie, r.origin, r.host))

    async def state(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        await _send(ex, send, dashboard.state(ex.request.cookie, trio.current_time()))

    async def events(ex: Exchange, receive: Receive, send: Send, _: str) -> None:
        denied = dashboard.check(ex.request.cookie, trio.current_time())
        if denied is not None:
            await _send(ex, send, denied)
            return
        await _stream(ex, receive, send, dashboard)

    return {
        "/dashboard": {"GET": page},
        "/dashboard/login": {"POST": login},
        "/dashboard/logout": {"POST": logout},
        "/dashboard/state": {"GET": state},
        "/dashboard/events": {"GET": events},
        **{f"/dashboard/static/{name}": {"GET": asset} for name in ASSETS},
    }


async def _send(ex: Exchange, send: Send, answer: Response) -> None:
    ex.status = answer.status
    ex.started = True
    ex.finished = True
    await send_response(send, answer.status, answer.body, [*answer.headers, (b"x-request-id", ex.request_id.encode())])


async def _stream(ex: Exchange, receive: Receive, send: Send, dashboard: Dashboard) -> None:
    """Send the SSE frames until the client leaves or the stream ends (see `Dashboard.frames`)."""
    headers = [*SSE_HEADERS, (b"x-request-id", ex.request_id.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    ex.status = 200
    ex.started = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope, ex)
        async with aclosing(dashboard.frames(ex.request.cookie)) as frames:
            async for frame in frames:
                # A page that stops reading is let go, not waited for (its bus queue drops it as well).
                with trio.move_on_after(SEND_S) as stuck:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                if stuck.cancelled_caught:
                    ex.disconnected = True
                    break
        if not ex.disconnected:
            ex.finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        nursery.cancel_scope.cancel(reason="dashboard stream ended")
    # An event stream has no end but its page leaving: that is answered (200), not a client that left (499).
    ex.disconnected = False
