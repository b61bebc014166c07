"""The SSE decoder gives the same events however the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.adapters import SSEDecoder, SSEEvent

STREAM = (
    ": comment\r\n"
    'event: message_start\r\ndata: {"a": "ü€𝄞"}\r\n\r\n'
    "data: line one\ndata: line two\n\n"
    "event: ping\rdata:{}\r\r"
    "id: 7\nretry: 100\ndata: last\n\n"
).encode()
EXPECTED = [
    SSEEvent("message_start", '{"a": "ü€𝄞"}'),
    SSEEvent("message", "line one\nline two"),
    SSEEvent("ping", "{}"),
    SSEEvent("message", "last"),
]


def decode(parts: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for p in parts:
        out.extend(decoder.feed(p))
    return out + decoder.flush()


def test_whole() -> None:
    assert decode([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode([bytes([b]) for b in STREAM]) == EXPECTED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    parts = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode(parts) == EXPECTED


def test_unterminated_event_is_dropped_but_final_line_kept() -> None:
    assert decode([b"data: x\n\ndata: y"]) == [SSEEvent("message", "x")]
