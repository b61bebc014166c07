"""The one rendering of a time for humans: trio clock seconds plus a wall offset, as ISO-8601 UTC.

Every rule runs on trio's clock; a wall time exists only to be read by a person (reasons, `/keys`,
`/state`, transitions, events, logs). The caller supplies `wall_offset` (wall seconds minus trio
seconds, measured once when the router starts), so this stays pure.

`render_wall(t, wall_offset)` never raises: it is called while building error messages and event
payloads, where a bad time must not become a second failure. Values before year 1 or after year 9999
(including ±inf) clamp to those ends; NaN and non-numbers render as `INVALID_TIME`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

__all__ = ["INVALID_TIME", "render_wall"]

INVALID_TIME = "invalid-time"

_EPOCH = datetime(1970, 1, 1)  # naive UTC: isoformat then carries no offset, and we append "Z"
_MIN_MS = (datetime.min - _EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (datetime.max - _EPOCH) // timedelta(milliseconds=1)


def render_wall(t: float, wall_offset: float) -> str:
    """Trio time `t` as UTC wall time with milliseconds, e.g. `2026-12-01T20:37:57.123Z`."""
    try:
        seconds = float(t) + float(wall_offset)
    except (TypeError, ValueError, OverflowError):
        return INVALID_TIME
    if math.isnan(seconds):
        return INVALID_TIME
    if seconds * 1000 <= _MIN_MS:
        ms = _MIN_MS
    elif seconds * 1000 >= _MAX_MS:
        ms = _MAX_MS
    else:
        ms = math.floor(seconds * 1000)
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"
