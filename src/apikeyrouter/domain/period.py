"""Calendar periods: the hour, day, week or month a wall-clock instant falls in, in a timezone.

A budget with a calendar period resets when the calendar says so (midnight on the first of the month in
Europe/Paris), not every 30 days from whenever the process started. The rule is a pure function of a wall
time (seconds since the epoch) and the period; the caller converts trio's clock to wall time at the
edge (`now + wall_offset`), so a test moves across a month boundary with `autojump_clock` and a fixed
offset, and nothing here reads a clock.

Weeks start on Monday (ISO 8601). Boundaries are computed on the local calendar and converted back
with `zoneinfo`, so a day that has 23 or 25 hours (daylight saving) is still one day, and a local
midnight that does not exist resolves the way `zoneinfo` resolves it (fold=0).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

__all__ = ["PERIOD_UNITS", "CalendarPeriod", "PeriodUnit", "bounds", "check_timezone", "zone"]

PeriodUnit = Literal["hour", "day", "week", "month"]
PERIOD_UNITS: Final = ("hour", "day", "week", "month")


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_timezone(name: str) -> str | None:
    """None when `name` is a timezone zoneinfo knows, else why not."""
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {name!r} (an IANA name such as 'UTC' or 'Europe/Paris')"
    return None


@attrs.frozen
class CalendarPeriod:
    unit: PeriodUnit
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        if self.unit not in PERIOD_UNITS:
            raise ValueError(f"period must be one of {', '.join(PERIOD_UNITS)}, got {self.unit!r}")
        if (problem := check_timezone(self.timezone)) is not None:
            raise ValueError(problem)


def _start_local(unit: PeriodUnit, local: dt.datetime) -> dt.datetime:
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_local(unit: PeriodUnit, start: dt.datetime) -> dt.datetime:
    if unit == "hour":
        return start + dt.timedelta(hours=1)
    if unit == "day":
        return (start + dt.timedelta(days=1)).replace(hour=0)
    if unit == "week":
        return (start + dt.timedelta(days=7)).replace(hour=0)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month, day=1, hour=0)


def bounds(period: CalendarPeriod, wall: float) -> tuple[float, float]:
    """The [start, end) of the period holding the wall time `wall`, as wall times (epoch seconds).

    Hours are cut on UTC: an hour is an hour in every timezone this side of the half-hour ones, and
    a local hour repeated by a DST change would otherwise be one period twice as long."""
    if period.unit == "hour":
        start_s = wall - (wall % 3600.0)
        return start_s, start_s + 3600.0
    tz = zone(period.timezone)
    local = dt.datetime.fromtimestamp(wall, tz)
    start = _start_local(period.unit, local).replace(tzinfo=None)
    end = _next_local(period.unit, start)
    return start.replace(tzinfo=tz).timestamp(), end.replace(tzinfo=tz).timestamp()
