"""History queries for people: `StateQuery` from text parameters, and rows as JSON with wall-clock times.

Shared by `GET /state/query` (proxy/state_query.py) and the debug channel's `history` op (`apikeyrouter
inspect transitions KEY --since 1h`). Parameters:

    trail     transitions | decisions | budgets          (default transitions)
    key       a key id (transitions, decisions)
    model, client, outcome                               (decisions; outcome is "ok" or a failure class)
    budget    a budget id (budgets)
    since, until   ISO-8601 UTC ("2026-12-01T20:00:00Z"), Unix seconds, or an age: "90s", "15m", "2h", "7d"
    limit     1..10000 rows, newest first (default 100)

A bad parameter is `InvalidRequest` naming it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import attrs
import trio

from apikeyrouter.domain.history import HistoryRow, StateQuery, Trail
from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.errors import InvalidRequest

__all__ = ["QUERY_PARAMS", "parse_state_query", "rows_json"]

QUERY_PARAMS = frozenset({"trail", "key", "model", "client", "outcome", "budget", "since", "until", "limit"})
MAX_LIMIT = 10_000
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def _wall_seconds(text: str, param: str, now_wall: float) -> float:
    text = text.strip()
    age = _AGE.match(text)
    if age is not None:
        return now_wall - float(age.group(1)) * _UNIT_S[age.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise InvalidRequest(f"{param} must be a finite time", param=param)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{param} must be ISO-8601 UTC, Unix seconds, or an age like 15m (got {text[:40]!r})", param=param
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_state_query(params: Mapping[str, str], wall_offset: float) -> StateQuery:
    """A `StateQuery` in trio time from text parameters (wall-clock times converted with `wall_offset`)."""
    unknown = sorted(set(params) - QUERY_PARAMS)
    if unknown:
        raise InvalidRequest(f"unknown parameters {unknown}; known: {sorted(QUERY_PARAMS)}", param=unknown[0])
    trail = params.get("trail", "transitions")
    if trail not in get_args(Trail):
        raise InvalidRequest(f"trail must be one of {list(get_args(Trail))} (got {trail[:40]!r})", param="trail")
    # An age ("15m") counts back from now on the clock the rows are stored against (trio time + the offset).
    now_wall = trio.current_time() + wall_offset
    since = params.get("since")
    until = params.get("until")
    raw_limit = params.get("limit", "100")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return StateQuery(
        trail=trail,  # type: ignore[arg-type]  # checked against Trail above
        key=params.get("key"),
        model=params.get("model"),
        client=params.get("client"),
        outcome=params.get("outcome"),
        budget=params.get("budget"),
        since=None if since is None else _wall_seconds(since, "since", now_wall) - wall_offset,
        until=None if until is None else _wall_seconds(until, "until", now_wall) - wall_offset,
        limit=limit,
    )


def rows_json(rows: list[HistoryRow], wall_offset: float) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        doc = attrs.asdict(row)
        doc["at_wall"] = render_wall(row.at, wall_offset)
        if doc.get("until") is not None:
            doc["until_wall"] = render_wall(doc["until"], wall_offset)
        if "amount" in doc:
            doc["amount"] = str(doc["amount"])
        out.append(doc)
    return out
