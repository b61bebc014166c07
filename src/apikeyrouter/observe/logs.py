"""Logging for the standalone process: one structlog event per line on stderr (JSON by default).

Each line's `timestamp` is `render_wall` of the wall clock (ISO-8601 UTC with milliseconds), the same
rendering as every other time the router shows; lines that report an event carry `event_json`'s fields.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from apikeyrouter.domain.walltime import render_wall

__all__ = ["configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json", stream: Any = None) -> None:
    """Events at `level` and above, rendered as JSON lines (or for a console) to `stream` (stderr)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def _timestamp(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = render_wall(time.time(), 0.0)
    return event_dict
