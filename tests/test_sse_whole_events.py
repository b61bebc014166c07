"""The SSE reader's shortcut for reads that are whole `data:` events gives what the line-by-line reader
gives, for every mix of event shapes and however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apikeyrouter.adapters import SSEDecoder, SSEEvent
from apikeyrouter.adapters._http import SSETooLarge

_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
_block = st.one_of(
    _text.map(lambda t: f"data: {t}\n\n"),  # the shape providers send
    _text.map(lambda t: f"data:{t}\n\n"),
    st.tuples(_text, _text).map(lambda p: f"event: {p[0]}\ndata: {p[1]}\n\n"),
    st.tuples(_text, _text).map(lambda p: f"data: {p[0]}\ndata: {p[1]}\n\n"),
    _text.map(lambda t: f": {t}\n\n"),
    _text.map(lambda t: f"data: {t}\r\n\r\n"),
    st.just("\n\n"),
)


def read(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events + decoder.flush()


@settings(max_examples=300)
@given(st.lists(_block, max_size=8), st.data())
def test_reads_of_whole_events_decode_like_the_line_by_line_reader(blocks: list[str], data: st.DataObject) -> None:
    encoded = [b.encode() for b in blocks]
    body = b"".join(encoded)
    byte_by_byte = read([body[i : i + 1] for i in range(len(body))])
    assert read(encoded) == byte_by_byte  # one read per event: the shortcut, where it applies
    assert read([body]) == byte_by_byte  # every event in one read
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert read(pieces) == byte_by_byte


def test_an_oversized_event_in_one_read_is_still_refused() -> None:
    with pytest.raises(SSETooLarge):
        SSEDecoder(limit=16).feed(b"data: " + b"x" * 64 + b"\n\n")
