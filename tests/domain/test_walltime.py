"""`render_wall`: the one rendering of a time for humans, and it never raises."""

from __future__ import annotations

import math

import pytest

from apikeyrouter.domain.walltime import INVALID_TIME, render_wall

# Trio time 100.0 on a router whose wall clock read 2026-12-01T20:37:57.123Z at that moment.
WALL = 1796157477.123 - 100.0


def test_a_trio_time_renders_as_iso_8601_utc_with_milliseconds() -> None:
    assert render_wall(100.0, WALL) == "2026-12-01T20:37:57.123Z"
    assert render_wall(100.0009, WALL) == "2026-12-01T20:37:57.123Z"  # truncated, never rounded up a second
    assert render_wall(0.0, 0.0) == "1970-01-01T00:00:00.000Z"
    assert render_wall(-0.0005, 0.0) == "1969-12-31T23:59:59.999Z"


@pytest.mark.parametrize(
    ("t", "shown"),
    [
        (math.inf, "9999-12-31T23:59:59.999Z"),
        (1e300, "9999-12-31T23:59:59.999Z"),
        (-math.inf, "0001-01-01T00:00:00.000Z"),
        (-1e300, "0001-01-01T00:00:00.000Z"),
        (math.nan, INVALID_TIME),
        ("soon", INVALID_TIME),
        (None, INVALID_TIME),
        (10**400, INVALID_TIME),  # too big even for a float
    ],
)
def test_absurd_times_clamp_or_render_a_safe_string(t: object, shown: str) -> None:
    assert render_wall(t, 0.0) == shown  # type: ignore[arg-type]
