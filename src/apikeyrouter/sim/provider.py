"""The simulated provider's brain: per-key state, decisions and statistics, free of sockets.

`SimProvider.handle(...)` turns a parsed HTTP request into a `Reply` plan (status, headers, body or
stream events, and any injected fault); the server (`sim.server`) carries the plan out over a socket and
reports back what actually happened to the connection (`record_*`), so tests can assert, for example,
that a cancelled client really closed its connection mid-request.

Time: windows use `clock()` (trio's clock by default, so virtual time works); the wall clock is read
only for the `Date` header and Anthropic's RFC 3339 reset instants, which are for humans and parsers.
"""

from __future__ import annotations

import enum
import json
import math
import random
import time
import zlib
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any

import attrs
import trio

from apikeyrouter.sim import wire
from apikeyrouter.sim.config import KeyBehavior, SimConfig
from apikeyrouter.sim.limits import SlidingWindow

__all__ = ["Fault", "KeyStats", "Reply", "SimProvider", "format_duration"]

Header = tuple[bytes, bytes]


class Fault(enum.Enum):
    NONE = "none"
    HANG = "hang"  # accept, never answer
    RESET = "reset"  # drop the connection without an answer


@attrs.frozen
class Reply:
    status: int
    headers: tuple[Header, ...]
    body: bytes = b""
    events: tuple[bytes, ...] | None = None  # a stream: SSE events, sent one write each
    fault: Fault = Fault.NONE
    cut_after: int = 0  # >0: close abruptly after this many events
    latency: float = 0.0
    chunk_delay: float = 0.0
    key: str = ""


@attrs.define
class KeyStats:
    requests: int = 0
    streams: int = 0
    completed: int = 0  # the whole response was written
    statuses: dict[int, int] = attrs.field(factory=dict)
    rate_limited: int = 0
    injected_errors: int = 0
    hangs: int = 0
    resets: int = 0
    cuts: int = 0
    disconnects: int = 0  # the client closed the connection before the response was complete

    def copy(self) -> KeyStats:
        return attrs.evolve(self, statuses=dict(self.statuses))


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3.5s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


class _KeyState:
    __slots__ = ("behavior", "requests", "rng", "tokens")

    def __init__(self, key: str, behavior: KeyBehavior) -> None:
        self.behavior = behavior
        self.requests = SlidingWindow(behavior.rpm, behavior.window_s)
        self.tokens = SlidingWindow(behavior.tpm, behavior.window_s)
        # crc32, not hash(): str hashes are salted per process and would break reproducibility.
        self.rng = random.Random(behavior.seed ^ zlib.crc32(key.encode()))


_JSON = (b"content-type", b"application/json")
_SSE = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))


class SimProvider:
    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SimConfig()
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyState] = {}
        self._stats: dict[str, KeyStats] = {}
        self._changed = trio.lowlevel.ParkingLot()
        self._date_cache: tuple[int, bytes] = (-1, b"")
        self._counter = 0

    # -- statistics --------------------------------------------------------------------------------------

    def stats(self, key: str) -> KeyStats:
        """A copy of what the simulator saw for `key` (all zeros if it never saw it)."""
        found = self._stats.get(key)
        return found.copy() if found is not None else KeyStats()

    def all_stats(self) -> dict[str, KeyStats]:
        return {k: v.copy() for k, v in self._stats.items()}

    async def wait_for(self, predicate: Callable[[SimProvider], bool]) -> None:
        """Block until `predicate(self)` holds; the caller bounds the wait with `trio.fail_after`."""
        while not predicate(self):
            await self._changed.park()

    def _stat(self, key: str) -> KeyStats:
        s = self._stats.get(key)
        if s is None:
            s = self._stats[key] = KeyStats()
        return s

    def _bump(self) -> None:
        self._changed.unpark_all()

    def record_completed(self, reply: Reply) -> None:
        s = self._stat(reply.key)
        s.completed += 1
        s.statuses[reply.status] = s.statuses.get(reply.status, 0) + 1
        self._bump()

    def record_disconnect(self, reply: Reply) -> None:
        self._stat(reply.key).disconnects += 1
        self._bump()

    def record_fault(self, reply: Reply, fault: str) -> None:
        s = self._stat(reply.key)
        if fault == "reset":
            s.resets += 1
        elif fault == "cut":
            s.cuts += 1
        self._bump()

    # -- requests ----------------------------------------------------------------------------------------

    def _date(self) -> bytes:
        now = int(self._wall())
        if self._date_cache[0] != now:
            self._date_cache = (now, formatdate(now, usegmt=True).encode())
        return self._date_cache[1]

    def _request_id(self) -> bytes:
        self._counter += 1
        return b"req_sim%010d" % self._counter

    def set_behavior(self, key: str, behavior: KeyBehavior) -> None:
        """Change how `key` behaves from now on (failure scenarios: a key that recovers, a key that breaks).
        Its rate-limit windows start afresh."""
        self._keys[key] = _KeyState(key, behavior)

    def _state(self, key: str) -> _KeyState:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyState(key, self.config.behavior_for(key))
        return st

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        route = path.split("?", 1)[0].rstrip("/")
        if route == "/v1/chat/completions" and method == "POST":
            return self._chat(headers, body, anthropic=False)
        if route == "/v1/messages" and method == "POST":
            return self._chat(headers, body, anthropic=True)
        if route == "/v1/models" and method == "GET":
            return self._models(headers)
        if route == "/health":
            return Reply(200, (_JSON,), b'{"status":"ok"}')
        return Reply(
            404,
            (_JSON,),
            wire.openai_error(f"Unknown request URL: {method} {route}.", "invalid_request_error", "unknown_url"),
        )

    @staticmethod
    def _key(headers: Mapping[str, str], anthropic: bool) -> str:
        if anthropic and headers.get("x-api-key"):
            return headers["x-api-key"]
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return headers.get("x-api-key", "") if not anthropic else ""

    def _error(
        self,
        anthropic: bool,
        status: int,
        etype: str,
        message: str,
        code: str | None = None,
        headers: tuple[Header, ...] = (),
        key: str = "",
    ) -> Reply:
        body = wire.anthropic_error(etype, message) if anthropic else wire.openai_error(message, etype, code)
        base = ((b"date", self._date()), (b"request-id" if anthropic else b"x-request-id", self._request_id()), _JSON)
        return Reply(status, base + headers, body, key=key)

    def _models(self, headers: Mapping[str, str]) -> Reply:
        key = self._key(headers, anthropic=False)
        if not key or self.config.behavior_for(key).behavior == "invalid":
            return self._unauthorized(False, key)
        self._stat(key).requests += 1
        return Reply(
            200, ((b"date", self._date()), _JSON), wire.openai_models(self.config.models, 1_700_000_000), key=key
        )

    def _unauthorized(self, anthropic: bool, key: str) -> Reply:
        if anthropic:
            return self._error(True, 401, "authentication_error", "invalid x-api-key", key=key)
        if not key:
            return self._error(
                False,
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                key=key,
            )
        # OpenAI echoes a masked form of the key; adapters must scrub even that.
        masked = key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else "****"
        return self._error(
            False,
            401,
            "invalid_request_error",
            f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_api_key",
            key=key,
        )

    def _limit_headers(self, st: _KeyState, anthropic: bool, now: float) -> tuple[Header, ...]:
        b = st.behavior
        # Real providers' limit headers are per minute; a window shortened for tests reports the
        # per-minute equivalent, so clients that read limits as per-minute stay right.
        scale = 60.0 / b.window_s
        rpm, tpm = round(b.rpm * scale), round(b.tpm * scale)
        rem_r, rem_t = st.requests.remaining(now), st.tokens.remaining(now)
        reset_r, reset_t = st.requests.full_reset(now), st.tokens.full_reset(now)
        if anthropic:
            wall = self._wall()
            return (
                (b"anthropic-ratelimit-requests-limit", b"%d" % rpm),
                (b"anthropic-ratelimit-requests-remaining", b"%d" % rem_r),
                (b"anthropic-ratelimit-requests-reset", _rfc3339(wall + reset_r)),
                (b"anthropic-ratelimit-tokens-limit", b"%d" % tpm),
                (b"anthropic-ratelimit-tokens-remaining", b"%d" % rem_t),
                (b"anthropic-ratelimit-tokens-reset", _rfc3339(wall + reset_t)),
            )
        return (
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-limit-tokens", b"%d" % tpm),
            (b"x-ratelimit-remaining-requests", b"%d" % rem_r),
            (b"x-ratelimit-remaining-tokens", b"%d" % rem_t),
            (b"x-ratelimit-reset-requests", format_duration(reset_r).encode()),
            (b"x-ratelimit-reset-tokens", format_duration(reset_t).encode()),
        )

    def _chat(self, headers: Mapping[str, str], raw: bytes, *, anthropic: bool) -> Reply:
        key = self._key(headers, anthropic)
        if not key:
            return self._unauthorized(anthropic, key)
        stats = self._stat(key)
        stats.requests += 1
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            msg = (
                "We could not parse the JSON body of your request."
                if not isinstance(body, dict)
                else "you must provide a model parameter"
            )
            return self._error(anthropic, 400, "invalid_request_error", msg, key=key)
        st = self._state(key)
        b = st.behavior
        if b.behavior == "invalid":
            return self._unauthorized(anthropic, key)
        now = self._clock()
        if b.behavior == "exhausted":
            limits = self._limit_headers(st, anthropic, now)
            if anthropic:
                return self._error(
                    True,
                    400,
                    "invalid_request_error",
                    "Your credit balance is too low to access the Anthropic API. Please go to "
                    "Plans & Billing to upgrade or purchase credits.",
                    headers=limits,
                    key=key,
                )
            return self._error(
                False,
                429,
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                headers=limits,
                key=key,
            )
        model = body["model"]
        messages = wire.messages_from_anthropic(body) if anthropic else wire.messages_from_openai(body)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if anthropic and not isinstance(max_tokens, int):
            return self._error(True, 400, "invalid_request_error", "max_tokens: Field required", key=key)
        answer = wire.answer_for(model, messages, max_tokens if isinstance(max_tokens, int) else None)
        tool = wire.tool_use_for(body, answer) if anthropic else None
        tokens = answer.prompt_tokens + answer.completion_tokens + (tool.tokens if tool is not None else 0)
        if not (st.requests.fits(1, now) and st.tokens.fits(tokens, now)):
            return self._rate_limited(st, anthropic, key, model, tokens, now)
        st.requests.add(1, now)
        st.tokens.add(tokens, now)
        limits = self._limit_headers(st, anthropic, now)
        latency = b.latency_ms / 1000.0
        roll = st.rng.random()
        if roll < b.reset_rate:
            return Reply(0, (), fault=Fault.RESET, key=key)
        roll -= b.reset_rate
        if roll < b.timeout_rate:
            stats.hangs += 1
            return Reply(0, (), fault=Fault.HANG, key=key)
        roll -= b.timeout_rate
        if roll < b.error_rate:
            stats.injected_errors += 1
            if st.rng.random() < 0.5:
                reply = self._error(
                    anthropic,
                    500,
                    "api_error" if anthropic else "server_error",
                    "Internal server error"
                    if anthropic
                    else "The server had an error while processing your request. Sorry about that!",
                    headers=limits,
                    key=key,
                )
            elif anthropic:
                reply = self._error(True, 529, "overloaded_error", "Overloaded", headers=limits, key=key)
            else:
                reply = self._error(
                    False,
                    503,
                    "server_error",
                    "The engine is currently overloaded, please try again later.",
                    headers=limits,
                    key=key,
                )
            return attrs.evolve(reply, latency=latency)
        common = (
            (b"date", self._date()),
            (b"request-id" if anthropic else b"x-request-id", self._request_id()),
            *limits,
        )
        stream = body.get("stream") is True
        if not stream:
            payload = (
                wire.anthropic_message(answer, model, tool)
                if anthropic
                else wire.openai_completion(answer, model, int(self._wall()))
            )
            return Reply(200, (*common, _JSON), payload, latency=latency, key=key)
        stats.streams += 1
        if anthropic:
            events, first_delta = wire.anthropic_stream(answer, model, tool)
        else:
            options = body.get("stream_options")
            include = isinstance(options, dict) and options.get("include_usage") is True
            events = wire.openai_stream(answer, model, int(self._wall()), include)
            first_delta = 1
        cut = first_delta + b.cut_stream_after if b.cut_stream_after else 0
        return Reply(
            200,
            (*common, *_SSE),
            events=tuple(events),
            cut_after=cut,
            latency=latency,
            chunk_delay=b.chunk_delay_ms / 1000.0,
            key=key,
        )

    def _rate_limited(self, st: _KeyState, anthropic: bool, key: str, model: str, tokens: int, now: float) -> Reply:
        b = st.behavior
        self._stat(key).rate_limited += 1
        wait_r = st.requests.wait(1, now)
        wait_t = st.tokens.wait(tokens, now)
        waits = [w if w is not None else b.window_s for w in (wait_r, wait_t)]
        retry = max(waits)
        by_requests = not st.requests.fits(1, now)
        retry_headers: tuple[Header, ...] = ((b"retry-after", b"%d" % max(1, math.ceil(retry))),)
        if not anthropic:
            retry_headers += ((b"retry-after-ms", b"%d" % math.ceil(retry * 1000)),)
        limits = self._limit_headers(st, anthropic, now) + retry_headers
        if anthropic:
            what = f"{b.rpm} requests" if by_requests else f"{b.tpm} tokens"
            return self._error(
                True,
                429,
                "rate_limit_error",
                f"This request would exceed your organization's rate limit of {what} per minute. "
                "Please reduce the prompt length or the maximum tokens requested, or try again "
                "later.",
                headers=limits,
                key=key,
            )
        kind, limit, used, asked = (
            ("requests", b.rpm, st.requests.used(now), 1)
            if by_requests
            else ("tokens", b.tpm, st.tokens.used(now), tokens)
        )
        unit = "RPM" if by_requests else "TPM"
        return self._error(
            False,
            429,
            kind,
            f"Rate limit reached for {model} in organization org-sim on {kind} per min ({unit}): "
            f"Limit {limit}, Used {used}, Requested {asked}. Please try again in "
            f"{format_duration(retry)}.",
            "rate_limit_exceeded",
            headers=limits,
            key=key,
        )


def _rfc3339(at: float) -> bytes:
    seconds = math.ceil(at)  # round up: a reset reported early would invite a 429
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)).encode()
