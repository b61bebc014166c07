"""Logging for the standalone process: one structlog event per line on stderr (JSON by default).

Each line's `timestamp` is `render_wall` of the wall clock (ISO-8601 UTC with milliseconds), the same
rendering as every other time the router shows; lines that report an event carry `event_json`'s fields.

A line costs what the request path can afford at debug level: JSON through orjson (the standard
library's encoder was a quarter of a line's cost), and the timestamp's date-and-seconds part rendered
once per second (the rest of that quarter).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import orjson
import structlog

from apikeyrouter.domain.walltime import render_wall

__all__ = ["configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json", stream: Any = None) -> None:
    """Events at `level` and above, rendered as JSON lines (or for a console) to `stream` (stderr)."""
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _Timestamp(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


class _Timestamp:
    """The `timestamp` processor: `render_wall(time.time(), 0.0)`, its seconds part kept per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        ms = math.floor(time.time() * 1000)
        second, part = divmod(ms, 1000)
        if second != self._second:
            self._prefix = render_wall(second, 0.0)[:-5]  # "...T01:55:07" of "...T01:55:07.000Z"
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{part:03d}Z"
        return event_dict


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None, **_kw: Any) -> str:
    """orjson's JSON for a log line; the standard library's for what orjson refuses (integers beyond 64
    bits, keys that are not strings), so a line is never lost to its encoding."""
    try:
        return orjson.dumps(obj, default=default).decode()
    except TypeError:
        return json.dumps(obj, default=default)
