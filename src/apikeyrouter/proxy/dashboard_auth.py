"""Who may look at the dashboard: server-side sessions behind an HttpOnly cookie, and the CSRF checks.

The admin token is typed once into a login form (POST, never a URL) and compared in constant time; what
the browser keeps is a random session id in a cookie that scripts cannot read (`HttpOnly`), that no other
site's page can make the browser send (`SameSite=Strict`), and that only reaches the dashboard's own paths
(`Path=/dashboard`). The token itself is never stored, set or echoed. A session ends at its expiry
(fixed from login: a stolen cookie is worth hours, not forever), at logout, or when evicted as the oldest
of too many. Time is trio's clock, passed in: sessions are pure bookkeeping, testable with `autojump_clock`.

CSRF: `SameSite=Strict` already keeps a cross-site form from carrying the cookie; the login and logout
POSTs also require an `Origin` naming this host, so a cross-site page cannot log a browser in with an
attacker's token (login CSRF) or out.

Nothing here knows about the server: functions take header values and return header values.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from urllib.parse import parse_qs, urlsplit

import attrs

__all__ = [
    "COOKIE_NAME",
    "COOKIE_PATH",
    "Session",
    "Sessions",
    "clear_cookie",
    "cookie_value",
    "login_token",
    "same_origin",
    "session_cookie",
]

COOKIE_NAME = "akr_dashboard"
COOKIE_PATH = "/dashboard"
MAX_FORM_BYTES = 4096  # a token and a field name; anything longer is not a login


@attrs.frozen
class Session:
    id: str
    created: float
    expires: float


class Sessions:
    """Live dashboard sessions by id (trio times). Bounded: past `limit`, the oldest is forgotten."""

    def __init__(self, *, ttl: float = 8 * 3600.0, limit: int = 64) -> None:
        if not ttl > 0 or limit < 1:
            raise ValueError("ttl and limit must be positive")
        self.ttl = float(ttl)
        self.limit = limit
        self._live: OrderedDict[str, Session] = OrderedDict()

    def open(self, now: float) -> Session:
        self._prune(now)
        while len(self._live) >= self.limit:
            self._live.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), now, now + self.ttl)
        self._live[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session `session_id` names, or None (unknown, logged out or expired)."""
        if not session_id:
            return None
        session = self._live.get(session_id)
        if session is None:
            return None
        if now >= session.expires:
            del self._live[session_id]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._live.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._live)

    def _prune(self, now: float) -> None:
        for sid in [sid for sid, s in self._live.items() if now >= s.expires]:
            del self._live[sid]


def session_cookie(session: Session, now: float) -> bytes:
    """The `Set-Cookie` value that hands `session` to the browser (expiring with the session)."""
    max_age = max(round(session.expires - now), 0)  # round: expires - now is ttl give or take a float ulp
    return (
        f"{COOKIE_NAME}={session.id}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    ).encode("ascii")


def clear_cookie() -> bytes:
    return f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict".encode("ascii")


def cookie_value(header: bytes | None, name: str = COOKIE_NAME) -> str | None:
    """The value of cookie `name` in a `Cookie` request header (None when absent)."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value
    return None


def same_origin(origin: bytes | None, host: bytes | None) -> bool:
    """Whether `Origin` names the host the request was sent to (scheme aside: TLS may end before us).

    A missing Origin is refused: every browser sends one on a POST, so only a non-browser omits it, and
    such a client has no business with a cookie form."""
    if not origin or not host or origin == b"null":
        return False
    try:
        parts = urlsplit(origin.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.decode("latin-1").lower()


def login_token(body: bytes) -> str | None:
    """The `token` field of an `application/x-www-form-urlencoded` login form, or None."""
    if len(body) > MAX_FORM_BYTES:
        return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=False, strict_parsing=False, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("token")
    if not values or len(values) != 1:
        return None
    token = values[0].strip()
    return token or None
