"""The quota-header readers' fast paths (the shapes providers send, read without a regex) agree with the
grammar exactly: every duration, count and date reads to the very value the general reading gives."""

from __future__ import annotations

import datetime as dt
import math
import re

from hypothesis import given
from hypothesis import strategies as st

from apikeyrouter.adapters.headers import (
    MAX_COUNT,
    LowerHeaders,
    clamp_seconds,
    parse_anthropic_headers,
    parse_count,
    parse_duration,
)

# The grammar the readers document, written out independently: a bare number of seconds, or Go-style
# parts `<number><unit>` one after another; units d, h, m, s, ms, us, µs, ns.
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s|d)")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def reference_duration(value: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    try:
        return clamp_seconds(float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    return clamp_seconds(total) if pos == len(text) and pos else None


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def go_duration(seconds: float) -> str:
    # OpenAI's reset format, as a provider writes it.
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


@given(st.floats(min_value=0, max_value=40 * 86400, allow_nan=False))
def test_every_reset_a_provider_writes_reads_as_the_grammar_says(seconds: float) -> None:
    text = go_duration(seconds)
    assert parse_duration(text) == reference_duration(text), text


_PIECES = ["1", "0", "12", "3.", ".5", "2.25", "h", "m", "s", "ms", "us", "ns", "µs", "d", ".", "٣", " ", "e", "-"]


@given(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
def test_any_text_built_of_duration_pieces_reads_as_the_grammar_says(text: str) -> None:
    assert same(parse_duration(text), reference_duration(text)), text


def test_durations_that_look_like_the_fast_shapes_but_are_not() -> None:
    for text in ["1m2h3s", "2h5ms", "1.5ms", "s", ".s", "1hs", "1e3s", "٣s", "5us", "5µs", " 7s ", "1h1h1s"]:
        assert same(parse_duration(text), reference_duration(text)), text
    assert parse_duration("1m2h3s") == 7263.0
    assert parse_duration("1.5ms") == 1.5e-3
    assert parse_duration("٣s") == 3.0  # what the grammar's \d and float() accept, the fast path leaves to them


_COUNTS = st.integers(min_value=-10, max_value=10**17).map(str)


@given(st.one_of(_COUNTS, st.text(alphabet="0123456789 +-._e٣", max_size=20)))
def test_counts_read_as_integers_in_range(text: str) -> None:
    try:
        expected: int | None = int(text.strip())
    except ValueError:
        try:
            as_float = float(text.strip())
            expected = int(as_float) if math.isfinite(as_float) else None
        except ValueError:
            expected = None
    if expected is not None and not 0 <= expected <= MAX_COUNT:
        expected = None
    if len(text.strip()) > 32:
        expected = None
    assert parse_count(text) == expected, text
    assert parse_count(str(MAX_COUNT)) == MAX_COUNT
    assert parse_count(str(MAX_COUNT + 1)) is None


def test_a_date_read_again_after_another_is_read_afresh() -> None:
    first = {"date": "Thu, 01 May 2025 12:00:00 GMT", "anthropic-ratelimit-requests-reset": "2025-05-01T12:00:10Z"}
    later = {"date": "Thu, 01 May 2025 12:00:05 GMT", "anthropic-ratelimit-requests-reset": "2025-05-01T12:00:10Z"}
    far = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert parse_anthropic_headers(first, wall_now=far).reset_requests_s == 10.0
    assert parse_anthropic_headers(first, wall_now=far).reset_requests_s == 10.0
    assert parse_anthropic_headers(later, wall_now=far).reset_requests_s == 5.0
    assert parse_anthropic_headers({**later, "date": "garbage"}, wall_now=far).reset_requests_s == 0.0


def test_raw_header_names_read_in_any_case_and_repeats_joined() -> None:
    raw = [(b"X-RateLimit-Limit-Requests", b"5"), (b"x-ratelimit-limit-requests", b"6"), (b"Date", b"d")]
    assert LowerHeaders.from_raw(raw) == {"x-ratelimit-limit-requests": "5, 6", "date": "d"}
    assert LowerHeaders.from_raw([(bytearray(b"Server"), b"a")]) == {"server": "a"}
