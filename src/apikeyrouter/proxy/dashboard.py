"""`GET /dashboard`: the live dashboard, as pure responses and an async iterator of server-sent events.

Routes (all under `/dashboard`, the session cookie's path):
    GET  /dashboard                 the page with a session, the login form without one
    POST /dashboard/login           form `token=<admin token>` -> 303 to /dashboard with the session cookie
    POST /dashboard/logout          ends the session, clears the cookie
    GET  /dashboard/state           one snapshot (JSON)
    GET  /dashboard/events          the live stream (SSE): `snapshot` about once a second, `bus` per event
    GET  /dashboard/static/<asset>  the page's script and style sheet (no data in them; no session needed)

Nothing here speaks HTTP: a handler gets a `Response` (status, headers, body) or, for the stream, the
frames to send; the HTTP app sends them. The page is one self-contained document (HTML, CSS and JS ship in
the package under `proxy/static/`; no CDN, no chart library) served under a CSP that allows only itself.

The stream is fed by a bounded bus subscription per page. Publishing never waits for a page: a page that
stops reading (its socket full) stops pulling, its queue fills, the bus drops it, and its stream ends with a
`dropped` frame (the browser's EventSource reconnects by itself and starts from a fresh snapshot). Rates are
counted inline from `RequestAttempted` (see `dashboard_model`), so a busy router costs the dashboard a
dict increment per attempt and nothing per page.

Budgets are the fleet's with a Redis store, as `GET /budgets` shows them: `refresh()` asks the router's
`shared_budgets()` (one read-only Redis round trip) at most once per snapshot interval, however many
pages watch, and never on the request path; the snapshot uses the last answer while it is fresh, and
each budget says its `scope` — `shared`, or `local` with `shared_error` when Redis is away.

Never a secret: keys appear by id and fingerprint; the snapshot is built from an allow-list of fields;
the admin token is compared and forgotten.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import AsyncGenerator, Iterable
from importlib import resources
from typing import Any

import attrs
import trio

from apikeyrouter.observe import Event, RequestAttempted, Subscriber, SubscriberLagged, event_json, render_wall
from apikeyrouter.proxy._http import json_bytes
from apikeyrouter.proxy.dashboard_auth import (
    Sessions,
    clear_cookie,
    cookie_value,
    login_token,
    same_origin,
    session_cookie,
)
from apikeyrouter.proxy.dashboard_model import RequestRates, Samples, money, project_budget, rates_json
from apikeyrouter.runtime.api import RouterAPI
from apikeyrouter.secret import Secret

__all__ = ["ASSETS", "Dashboard", "Response", "sse_frame"]

Headers = list[tuple[bytes, bytes]]

ASSETS = {"dashboard.js": b"text/javascript; charset=utf-8", "dashboard.css": b"text/css; charset=utf-8"}
STREAM_KINDS = ("key", "provider", "budget", "supervisor", "config")  # per-attempt events go to the rates
KEY_FIELDS = (
    "id", "provider", "fingerprint", "lifecycle", "lifecycle_until_wall", "lifecycle_reason", "capacity",
    "capacity_left_pct", "prediction", "breaker", "breaker_until_wall", "in_flight", "max_in_flight",
    "success_rate", "latency_ms", "spend", "budget", "requests",
)  # fmt: skip
BURNDOWN_KEYS = 48  # the lowest-capacity keys get a chart; a thousand sparklines help nobody
DECISIONS = 15
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS: Headers = [
    (b"content-security-policy", _CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make the login POST say Origin: null
    (b"cache-control", b"no-store"),
]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


@attrs.frozen
class Response:
    status: int
    headers: Headers
    body: bytes


def sse_frame(event: str, data: Any) -> bytes:
    # Compact JSON has no raw newline (one inside a string is escaped): one `data:` line per frame.
    return b"event: " + event.encode("ascii") + b"\ndata: " + json_bytes(data) + b"\n\n"


@functools.cache  # read once per process, not once per app
def _static(name: str) -> str:
    return resources.files("apikeyrouter.proxy").joinpath("static", name).read_text("utf-8")


class Dashboard:
    """The dashboard of one running router. `admin_token` None: the dashboard is disabled (403)."""

    def __init__(
        self,
        router: RouterAPI,
        admin_token: Secret | None,
        *,
        sessions: Sessions | None = None,
        interval: float = 1.0,
        capacity: int = 64,
    ) -> None:
        self.router = router
        self.admin_token = admin_token
        self.sessions = sessions if sessions is not None else Sessions()
        self.interval = interval
        self.capacity = capacity
        self.rates = RequestRates()
        self.samples = Samples()
        self._streams: set[Subscriber] = set()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._shared: tuple[float, dict[str, Any]] | None = None  # (asked at, shared_budgets())
        self._shared_asked = -math.inf
        self._login = _static("login.html")
        self._page = _static("dashboard.html").encode("utf-8")
        self._assets = {name: _static(name).encode("utf-8") for name in ASSETS}
        router.events.observe(RequestAttempted, self.rates.record)

    # -- pages ----------------------------------------------------------------------------------------

    def page(self, cookie: bytes | None, now: float) -> Response:
        if self.admin_token is None:
            return self._disabled()
        if self.sessions.get(cookie_value(cookie), now) is None:
            return self._login_form(200, "")
        return Response(200, self._html_headers(), self._page)

    def login(self, body: bytes, origin: bytes | None, host: bytes | None, now: float) -> Response:
        if self.admin_token is None:
            return self._disabled()
        if not same_origin(origin, host):
            return self._login_form(403, "This login did not come from this dashboard's own page (Origin check).")
        token = login_token(body)
        if token is None or not self.admin_token.matches(token):
            return self._login_form(401, "That is not the admin token.")
        session = self.sessions.open(now)
        headers = [(b"location", b"/dashboard"), (b"set-cookie", session_cookie(session, now)), *_PAGE_HEADERS]
        return Response(303, headers, b"")

    def logout(self, cookie: bytes | None, origin: bytes | None, host: bytes | None) -> Response:
        if not same_origin(origin, host):
            return self._login_form(403, "This logout did not come from this dashboard's own page (Origin check).")
        self.sessions.close(cookie_value(cookie))
        return Response(303, [(b"location", b"/dashboard"), (b"set-cookie", clear_cookie()), *_PAGE_HEADERS], b"")

    def asset(self, name: str) -> Response | None:
        body = self._assets.get(name)
        if body is None:
            return None
        headers = [(b"content-type", ASSETS[name]), (b"x-content-type-options", b"nosniff")]
        return Response(200, [*headers, (b"cache-control", b"no-cache")], body)

    def state(self, cookie: bytes | None, now: float) -> Response:
        denied = self.check(cookie, now)
        if denied is not None:
            return denied
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        return Response(200, headers, json_bytes(self.snapshot(now)))

    async def refresh(self, now: float) -> None:
        """Ask for the fleet's budgets when the last answer is an interval old (module docstring). Callers
        check the session first: strangers cause no round trip."""
        if now - self._shared_asked < self.interval:
            return  # fresh, or being asked for by another page right now
        self._shared_asked = now
        self._shared = (now, await self.router.shared_budgets())

    def check(self, cookie: bytes | None, now: float) -> Response | None:
        """None when `cookie` holds a live session; else the answer to give (JSON: scripts ask these)."""
        if self.admin_token is None:
            return self._json_error(403, "the dashboard is disabled: no admin token is configured", "admin_disabled")
        if self.sessions.get(cookie_value(cookie), now) is None:
            return self._json_error(401, "log in at /dashboard first (the session is missing or expired)", "login")
        return None

    def close(self) -> None:
        """End every open stream (the server is shutting down: let the drain finish)."""
        for sub in list(self._streams):
            sub.close()

    # -- the stream -----------------------------------------------------------------------------------

    async def frames(self, cookie: bytes | None) -> AsyncGenerator[bytes, None]:
        """SSE frames for one page until its session ends, the page lags, or `close()`. Check the session
        first (`check`): this only notices its end between frames."""
        session_id = cookie_value(cookie)
        sub = self.router.events.subscribe(STREAM_KINDS, capacity=self.capacity)
        self._streams.add(sub)
        try:
            offset = self.router.events.wall_offset
            earlier = self.router.events.recent(30, STREAM_KINDS)  # what led here: the events list starts full
            recent = b"".join(sse_frame("bus", event_json(e, offset)) for e in earlier)
            await self.refresh(trio.current_time())
            yield b"retry: 2000\n\n" + recent + sse_frame("snapshot", self.snapshot(trio.current_time()))
            next_tick = trio.current_time() + self.interval
            while True:
                if self.sessions.get(session_id, trio.current_time()) is None:
                    yield sse_frame("expired", {"message": "the session ended: log in again"})
                    return
                try:
                    event = await _next_event(sub, next_tick)
                except SubscriberLagged as exc:
                    yield sse_frame("dropped", {"message": str(exc)})
                    return
                except trio.EndOfChannel:
                    yield sse_frame("closing", {"message": "the server is shutting down"})
                    return
                now = trio.current_time()
                if event is not None:
                    yield sse_frame("bus", event_json(event, offset))
                    next_tick = min(next_tick, now + self.interval / 10)  # the state it changed, soon
                    continue
                await self.refresh(now)
                yield sse_frame("snapshot", self.snapshot(trio.current_time()))
                next_tick = now + self.interval
        finally:
            self._streams.discard(sub)
            sub.close()

    # -- the snapshot ---------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the page shows, built at most once per half interval however many pages watch."""
        if self._cache is not None and now - self._cache[0] < self.interval / 2:
            return self._cache[1]
        offset = self.router.events.wall_offset
        keys = [{f: k.get(f) for f in KEY_FIELDS} for k in self.router.keys()]
        budgets = self._budgets(now)
        if self.samples.due(now):
            values = {f"key:{k['id']}": float(k.get("capacity_left_pct") or 0.0) for k in keys}
            values.update({f"budget:{bid}": float(money(b.get("spent"))) for bid, b in budgets.items()})
            self.samples.add(now, values)
        value = {
            "now_wall": _wall(now, offset),
            "keys": keys,
            "burndown": self._burndown(keys, now),
            "budgets": [self._budget(bid, budgets[bid], now, offset) for bid in sorted(budgets)],
            "rates": rates_json(self.rates.series(now), offset),
            "decisions": [_decision(d) for d in reversed(self.router.decisions(DECISIONS))],
        }
        self._cache = (now, value)
        return value

    def _burndown(self, keys: Iterable[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        ranked = sorted(keys, key=lambda k: (float(k.get("capacity_left_pct") or 0.0), str(k["id"])))
        out = []
        for k in ranked[:BURNDOWN_KEYS]:
            points = [[round(t - now, 1), round(v, 1)] for t, v in self.samples.get(f"key:{k['id']}")]
            points.append([0.0, float(k.get("capacity_left_pct") or 0.0)])  # now, even between samples
            prediction = k.get("prediction") or {}
            out.append(
                {
                    "key": k["id"],
                    "points": points,  # (seconds before now, capacity left %)
                    "seconds_to_exhaustion": prediction.get("seconds_to_exhaustion"),
                    "confidence": prediction.get("confidence", 0.0),
                }
            )
        return out

    def _budgets(self, now: float) -> dict[str, Any]:
        """The last `shared_budgets()` answer while fresh (3 intervals: a page or two may miss a beat),
        else this instance's own figures."""
        local = self.router.budgets()
        if self._shared is None or now - self._shared[0] > 3 * self.interval:
            return local
        shared = self._shared[1]
        return {bid: shared.get(bid, view) for bid, view in local.items()}  # budgets now, figures as asked

    def _budget(self, bid: str, b: dict[str, Any], now: float, offset: float) -> dict[str, Any]:
        limit, spent, reserved = money(b.get("limit")), money(b.get("spent")), money(b.get("reserved"))
        remaining = limit - spent - reserved
        projection = project_budget(self.samples.get(f"budget:{bid}"), float(remaining), now)
        seconds = projection.seconds
        return {
            "id": bid,
            "limit": str(limit),
            "spent": str(spent),
            "reserved": str(reserved),
            "remaining": str(remaining),
            "used_pct": round(float((spent + reserved) / limit * 100), 1) if limit > 0 else 100.0,
            "per_hour": round(projection.per_hour, 6),
            "seconds_to_exhaustion": None if seconds is None else round(seconds, 1),
            "exhaustion_wall": None if seconds is None else _wall(now + seconds, offset),
            "confidence": projection.confidence,
            # "shared": every instance's spend (Redis); "local": this instance's alone (no Redis store, or
            # Redis away: `shared_error` says why).
            "scope": b.get("scope", "local"),
            "shared_error": b.get("shared_error"),
            "local_spent": str(money((b.get("local") or b).get("spent"))),
        }

    # -- helpers --------------------------------------------------------------------------------------

    def _login_form(self, status: int, error: str) -> Response:
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        body = self._login.replace("<!--error-->", message).encode("utf-8")
        return Response(status, self._html_headers(), body)

    def _disabled(self) -> Response:
        body = self._login.replace(
            "<!--error-->",
            '<p class="error" role="alert">The dashboard is disabled: no admin token is configured '
            "(set server.admin_token or server.admin_token_env).</p>",
        )
        return Response(403, self._html_headers(), body.encode("utf-8"))

    @staticmethod
    def _html_headers() -> Headers:
        return [(b"content-type", b"text/html; charset=utf-8"), *_PAGE_HEADERS]

    @staticmethod
    def _json_error(status: int, message: str, code: str) -> Response:
        body = json_bytes({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
        return Response(status, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)


async def _next_event(sub: Subscriber, deadline: float) -> Event | None:
    """The next event, or None when `deadline` comes first (the subscription stays open)."""
    with trio.move_on_at(deadline):
        return await sub.receive()
    return None


def _wall(t: float, offset: float) -> str:
    return render_wall(t, offset)


def _decision(d: dict[str, Any]) -> dict[str, Any]:
    excluded = d.get("excluded") or {}
    return {
        "id": d.get("id"),
        "at_wall": d.get("at_wall"),
        "model": d.get("model"),
        "objective": d.get("objective"),
        "chosen": d.get("chosen"),
        "explanation": d.get("explanation"),
        "candidates": [{"key": c.get("key"), "score": c.get("score")} for c in (d.get("candidates") or [])[:3]],
        "excluded": dict(list(excluded.items())[:5]),
        "excluded_total": d.get("excluded_total", len(excluded)),
    }
