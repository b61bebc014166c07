"""Quota headers -> QuotaSignal, as documented by each provider."""

from __future__ import annotations

import datetime as dt

import pytest

from apikeyrouter.adapters import parse_anthropic_headers, parse_duration, parse_openai_headers
from apikeyrouter.adapters.headers import parse_retry_after
from apikeyrouter.domain.signal import QuotaSignal


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("7.66s", 7.66),
        ("2m59.56s", 179.56),
        ("2.5", 2.5),
        ("1d", 86400.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "-1s", "1s garbage", "nan", "inf"])
def test_bad_durations_are_unknown(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "29950",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_openai_headers(headers) == QuotaSignal(
        limit_requests=500,
        remaining_requests=499,
        reset_requests_s=0.12,
        limit_tokens=30000,
        remaining_tokens=29950,
        reset_tokens_s=360.0,
    )


def test_openai_headers_case_insensitive_and_garbage_dropped() -> None:
    sig = parse_openai_headers({"X-RateLimit-Limit-Requests": "60", "x-ratelimit-remaining-tokens": "lots"})
    assert sig == QuotaSignal(limit_requests=60)
    assert parse_openai_headers({}).empty


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "20"}) == 20.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    # retry-after-ms is finer and wins
    assert parse_retry_after({"retry-after": "2", "retry-after-ms": "1250"}) == 1.25
    # an HTTP date is converted against the response's own Date header
    assert (
        parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT", "date": "Wed, 21 Oct 2015 07:28:00 GMT"})
        == 30.0
    )
    # ... and without a Date header it is unknown, not computed against our clock
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}) is None
    assert parse_retry_after({"retry-after": "whenever"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None


def test_anthropic_headers_use_the_response_date() -> None:
    headers = {
        "date": "Thu, 01 May 2025 12:00:00 GMT",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2025-05-01T12:00:01Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2025-05-01T12:00:30Z",
        "retry-after": "7",
    }
    # the wall clock passed here is far off and must not be used: the Date header wins
    sig = parse_anthropic_headers(headers, wall_now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert sig == QuotaSignal(
        limit_requests=50,
        remaining_requests=49,
        reset_requests_s=1.0,
        limit_tokens=40000,
        remaining_tokens=39000,
        reset_tokens_s=30.0,
        retry_after_s=7.0,
    )


def test_anthropic_headers_without_date_use_the_wall_clock_and_pick_tightest_tokens() -> None:
    now = dt.datetime(2025, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "20000",
        "anthropic-ratelimit-input-tokens-remaining": "19000",
        "anthropic-ratelimit-input-tokens-reset": "2025-05-01T12:00:05Z",
        "anthropic-ratelimit-output-tokens-limit": "4000",
        "anthropic-ratelimit-output-tokens-remaining": "100",
        "anthropic-ratelimit-output-tokens-reset": "2025-05-01T12:00:45.5+00:00",
        "anthropic-ratelimit-requests-reset": "2025-05-01T11:59:00Z",  # in the past: clamps to 0
    }
    sig = parse_anthropic_headers(headers, wall_now=now)
    assert (sig.limit_tokens, sig.remaining_tokens, sig.reset_tokens_s) == (4000, 100, 45.5)
    assert sig.reset_requests_s == 0.0
