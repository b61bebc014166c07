"""The JSON log line `serve` writes: one object per line, its timestamp the wall clock rendered like every
other time the router shows, and no event lost to a value orjson refuses."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
import structlog

from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.observe.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_debug_line_is_one_json_object_with_a_wall_timestamp_in_milliseconds() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    log = structlog.get_logger("apikeyrouter.request")
    before = render_wall(time.time(), 0.0)
    for i in range(3):
        log.debug("attempt_succeeded", request_id=f"req-{i}", latency_ms=0.125, client=None, text="héllo")
    after = render_wall(time.time(), 0.0)
    lines = _lines(stream)
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    for line in lines:
        assert line["event"] == "attempt_succeeded" and line["level"] == "debug"
        assert line["latency_ms"] == 0.125 and line["client"] is None and line["text"] == "héllo"
        stamp = line["timestamp"]
        assert isinstance(stamp, str) and len(stamp) == len(before) and stamp.endswith("Z")
        assert before <= stamp <= after  # ISO-8601 of one width orders as text


def test_values_orjson_refuses_still_make_their_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger("apikeyrouter.request")
    log.info("big", count=2**70, by_status={200: 3})
    log.info("odd", value=object())
    lines = _lines(stream)
    assert lines[0]["count"] == 2**70 and lines[0]["by_status"] == {"200": 3}
    assert lines[1]["event"] == "odd" and "object" in str(lines[1]["value"])
    log.debug("not written at info")
    assert len(_lines(stream)) == 2
