"""Quota signals from provider response headers, as pure functions.

OpenAI sends `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets as Go-style durations
(`1s`, `6m0s`, `20ms`, `1h2m3.5s`), plus `Retry-After` and sometimes `retry-after-ms` on 429s.
Anthropic sends `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
with resets as RFC 3339 instants, plus `retry-after` (seconds).

Every reset in a `QuotaSignal` is seconds from receipt. Absolute instants are converted against the
response's own `Date` header when it has one (the provider's clock, so skew between us and them cancels
out); only Anthropic resets fall back to our wall clock, and only here, at the edge. A value that cannot
be parsed is dropped (None), never guessed.

Nothing an upstream sends is trusted to be sane: every duration is clamped to `[0, MAX_RESET_S]` (31 days;
a `Retry-After: 1000000000000` is a month, not year 33715), NaN and infinities are unknown, and a count
must be an integer in `[0, MAX_COUNT]` or it is unknown.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import math
import re
from collections.abc import Mapping

from apikeyrouter.domain.signal import QuotaSignal

__all__ = [
    "MAX_COUNT",
    "MAX_RESET_S",
    "LowerHeaders",
    "clamp_seconds",
    "parse_anthropic_headers",
    "parse_count",
    "parse_duration",
    "parse_openai_headers",
    "parse_retry_after",
]

Headers = Mapping[str, str]


class LowerHeaders(dict[str, str]):
    """Response headers as a plain dict whose names are all lowercase (a repeated header's values joined
    with ", ", as `httpx.Headers.get` gives them): what the direct transport path hands `signal_from`,
    built once per response, and read here without another lowering pass."""

    @classmethod
    def from_raw(cls, items: list[tuple[bytes, bytes]]) -> LowerHeaders:
        names = _NAMES
        try:
            view = cls({names.get(name) or _lower_name(name): value.decode("latin-1") for name, value in items})
        except TypeError:  # a name as a bytearray or memoryview: not a key of the cache
            view = None
        if view is not None and len(view) == len(items):
            return view
        view = cls()  # a repeated header (or an unhashable name): joined as httpx joins them
        for raw_name, raw_value in items:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            seen = view.get(name)
            view[name] = value if seen is None else f"{seen}, {value}"
        return view


# raw header name -> its lowercase text: names recur on every response (a few dozen per provider), so each
# is decoded and lowered once; the bound only guards against an upstream inventing names without end.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES = 1024


def _lower_name(raw_name: bytes) -> str:
    name = raw_name.decode("latin-1").lower()
    if len(_NAMES) >= _MAX_NAMES:
        _NAMES.clear()
    _NAMES[raw_name] = name
    return name


# The longest wait an upstream may impose through a header; a longer one is read as this. Quota windows are
# at most a month, and a wait beyond it is a broken or hostile header (it would not even render as a date).
MAX_RESET_S = 31 * 86400.0
# The largest request or token count a header may report; more is not a real quota.
MAX_COUNT = 10**15

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s|d)")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _lower(headers: Headers) -> Mapping[str, str]:
    # httpx.Headers is already case-insensitive, plain dicts are not; one lowering pass serves both.
    if type(headers) is LowerHeaders:
        return headers
    return {k.lower(): v for k, v in headers.items()}


def clamp_seconds(value: float | None) -> float | None:
    """A wait from upstream made sane: NaN, infinities and negative values are unknown (None), and
    anything beyond `MAX_RESET_S` is `MAX_RESET_S`."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RESET_S)


def parse_duration(value: str) -> float | None:
    """`6m0s` -> 360.0, `20ms` -> 0.02, `1h2m3.5s` -> 3723.5, `2.5` (bare seconds) -> 2.5; else None.

    At most `MAX_RESET_S`: a longer duration is read as that."""
    try:
        return _durations[value]
    except KeyError:
        pass
    seconds = _parse_duration(value)
    if len(value) <= 32:
        if len(_durations) >= _DURATIONS_CACHED:
            _durations.clear()
        _durations[value] = seconds
    return seconds


# Reset strings seen lately: a key far from its limit reports the same `1ms` or `6m0s` again and again.
_DURATIONS_CACHED = 512
_durations: dict[str, float | None] = {}


def _parse_duration(value: str) -> float | None:
    text = value.strip()
    if len(text) <= 32:
        fast = _provider_duration(text)
        if fast is not None:
            return clamp_seconds(fast)
    if not text:
        return None
    try:
        plain = float(text)
    except ValueError:
        pass
    else:
        return clamp_seconds(plain)
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return clamp_seconds(total)


def _provider_duration(text: str) -> float | None:
    """The shapes OpenAI sends (`20ms`, `7.66s`, `6m0s`, `1h2m3.5s`, ASCII digits), read without the regex,
    to the same float the general reader computes (the same operations in the same order); None: any
    other text, for the general reader to judge."""
    if not text.isascii():
        return None
    if text.endswith("ms"):
        number = text[:-2]
        return float(number) * 1e-3 if number.isdigit() else None
    if not text.endswith("s") or text.endswith(("us", "ns")):
        return None
    rest = text[:-1]
    total = 0.0
    if "h" in rest:
        hours, _, rest = rest.partition("h")
        if not hours.isdigit():
            return None
        total += float(hours) * 3600.0
    if "m" in rest:
        minutes, _, rest = rest.partition("m")
        if not minutes.isdigit():
            return None
        total += float(minutes) * 60.0
    whole, dot, fraction = rest.partition(".")
    if not (whole.isdigit() or (dot and not whole)) or (fraction and not fraction.isdigit()):
        return None
    if not whole and not fraction:
        return None
    return total + float(rest) * 1.0


def parse_count(value: str | None) -> int | None:
    """A request or token count from a header: an integer in `[0, MAX_COUNT]`, else None."""
    if value is None:
        return None
    if value.isdigit() and value.isascii() and len(value) <= 15:
        return int(value)  # what providers send: a plain count, below MAX_COUNT by its length
    text = value.strip()
    if len(text) > 32:
        return None  # int() of a long digit string is slow and its value absurd anyway
    try:
        number = int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            return None
        if not math.isfinite(as_float):
            return None
        number = int(as_float)
    return number if 0 <= number <= MAX_COUNT else None


def _http_date(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    global _last_date
    if _last_date[0] == value:
        return _last_date[1]  # a response's `Date` changes once a second: parsed once per second, not per call
    parsed = _parse_http_date(value)
    _last_date = (value, parsed)
    return parsed


_last_date: tuple[str, _dt.datetime | None] = ("", None)


def _parse_http_date(value: str) -> _dt.datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed


def _rfc3339(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed


def parse_retry_after(headers: Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` (preferred: finer) or `Retry-After` (seconds or HTTP date).

    An HTTP-date is converted relative to the response's own `Date` header; without one the delay is
    unknown (None) rather than computed against a clock the provider does not share.
    """
    h = _lower(headers)
    return _retry_after(h)


def _between(at: _dt.datetime, reference: _dt.datetime) -> float:
    """Seconds from `reference` to `at`, in `[0, MAX_RESET_S]`."""
    return min(MAX_RESET_S, max(0.0, (at - reference).total_seconds()))


def _retry_after(h: Mapping[str, str]) -> float | None:
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            millis = float(ms.strip())
        except ValueError:
            millis = math.nan
        if math.isfinite(millis) and millis >= 0:
            return clamp_seconds(millis / 1000.0)
    raw = h.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        at = _http_date(raw)
        date = _http_date(h.get("date"))
        if at is None or date is None:
            return None
        return _between(at, date)
    return clamp_seconds(seconds)


def parse_openai_headers(headers: Headers) -> QuotaSignal:
    h = _lower(headers)
    get = h.get
    reset_requests = get("x-ratelimit-reset-requests")
    reset_tokens = get("x-ratelimit-reset-tokens")
    # Retry-After comes with a 429, seldom with a success: looked for only when one of its names is there.
    retry = _retry_after(h) if "retry-after" in h or "retry-after-ms" in h else None
    return QuotaSignal(
        limit_requests=parse_count(get("x-ratelimit-limit-requests")),
        remaining_requests=parse_count(get("x-ratelimit-remaining-requests")),
        reset_requests_s=None if reset_requests is None else parse_duration(reset_requests),
        limit_tokens=parse_count(get("x-ratelimit-limit-tokens")),
        remaining_tokens=parse_count(get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=None if reset_tokens is None else parse_duration(reset_tokens),
        retry_after_s=retry,
    )


def parse_anthropic_headers(headers: Headers, *, wall_now: _dt.datetime | None = None) -> QuotaSignal:
    """Anthropic's headers as a `QuotaSignal`.

    Anthropic reports up to three token families (`tokens`, `input-tokens`, `output-tokens`); the signal
    carries the most constraining one (fewest remaining), since that is the one that will refuse us first.
    `wall_now` is only used when the response has no `Date` header (tests pass it to stay deterministic).
    """
    h = _lower(headers)
    reference = _http_date(h.get("date"))
    if reference is None:
        reference = wall_now if wall_now is not None else _dt.datetime.now(_dt.UTC)

    def reset(name: str) -> float | None:
        at = _rfc3339(h.get(name))
        if at is None:
            return None
        return _between(at, reference)

    prefix = "anthropic-ratelimit-"
    best: tuple[int | None, int | None, float | None] = (None, None, None)
    for family in ("tokens", "input-tokens", "output-tokens"):
        remaining = parse_count(h.get(f"{prefix}{family}-remaining"))
        limit = parse_count(h.get(f"{prefix}{family}-limit"))
        if remaining is None and limit is None:
            continue
        candidate = (limit, remaining, reset(f"{prefix}{family}-reset"))
        if best == (None, None, None) or (remaining is not None and (best[1] is None or remaining < best[1])):
            best = candidate
    return QuotaSignal(
        limit_requests=parse_count(h.get(f"{prefix}requests-limit")),
        remaining_requests=parse_count(h.get(f"{prefix}requests-remaining")),
        reset_requests_s=reset(f"{prefix}requests-reset"),
        limit_tokens=best[0],
        remaining_tokens=best[1],
        reset_tokens_s=best[2],
        retry_after_s=_retry_after(h),
    )
