"""Server-sent events, decoded incrementally from the bytes of a streamed response.

Kept apart from the adapters' HTTP plumbing (`_http`, which re-exports these names): it is pure bytes in,
events out, and the one piece of the streaming path that runs per network chunk.
"""

from __future__ import annotations

import attrs

__all__ = ["MAX_EVENT_BYTES", "SSEDecoder", "SSEEvent", "SSETooLarge"]

# More than any one stream event holds (a chunk of a stream is a few hundred bytes): beyond it the stream is
# broken or hostile, and the event is refused before it is buffered whole.
MAX_EVENT_BYTES = 1024 * 1024


@attrs.frozen
class SSEEvent:
    event: str  # "message" when the server sent no `event:` field
    data: str


class SSETooLarge(ValueError):
    """An event (or one line of it) longer than any provider sends: the stream is broken or hostile."""


class SSEDecoder:
    """Incremental server-sent-events decoder, indifferent to where the network split the bytes.

    Lines end in LF, CRLF or CR. A trailing CR is held back until the next chunk shows whether an LF
    follows. Lines are decoded as UTF-8 only once complete, so a multi-byte character split across
    chunks is reassembled first (line terminators never occur inside a UTF-8 sequence).

    Bytes are scanned once, however the network splits them (a line dripped one byte at a time costs
    what it costs in one piece), and a line or an event longer than `limit` bytes raises `SSETooLarge`
    instead of growing the buffer without end.
    """

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no line terminator
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._buffer and not self._data and not self._event and chunk.endswith(b"\n\n"):
            fast = self._whole_events(chunk)
            if fast is not None:
                return fast
        self._buffer += chunk
        events: list[SSEEvent] = []
        buf = self._buffer
        start = 0
        pos = self._scanned
        n = len(buf)
        while pos < n:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else n)
            if cr >= 0:
                if cr == n - 1:
                    pos = cr  # maybe half of a CRLF: look at it again with the next chunk
                    break
                end, nxt = cr, cr + (2 if buf[cr + 1 : cr + 2] == b"\n" else 1)
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                pos = n
                break
            self._line(bytes(buf[start:end]), events)
            start = pos = nxt
        del buf[:start]
        self._scanned = pos - start
        if len(buf) > self._limit:
            raise SSETooLarge(f"an event stream line longer than {self._limit} bytes")
        return events

    def _whole_events(self, chunk: bytes) -> list[SSEEvent] | None:
        """The events of a chunk that is whole events of one `data: ...` line each, an `event: ...` line
        before it or not, and nothing else (what providers send, one network read per event: OpenAI without
        names, Anthropic with), without the line-by-line scan; None: anything else (CR line ends, comments,
        other fields, several data lines), for the general reader."""
        if b"\r" in chunk:
            return None
        blocks = chunk.split(b"\n\n")
        blocks.pop()  # the empty tail after the last blank line
        events: list[SSEEvent] = []
        for block in blocks:
            if not block:
                continue
            if len(block) > self._limit:
                return None
            if block.startswith(b"data: "):
                if b"\n" in block:
                    return None
                events.append(SSEEvent("message", block[6:].decode("utf-8", errors="replace")))
            elif block.startswith(b"event: "):
                name, _, data = block[7:].partition(b"\n")
                if not data.startswith(b"data: ") or b"\n" in data:
                    return None
                kind = name.decode("utf-8", errors="replace") or "message"
                events.append(SSEEvent(kind, data[6:].decode("utf-8", errors="replace")))
            else:
                return None
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: a final line without terminator counts; an undispatched event is dropped (per spec)."""
        events: list[SSEEvent] = []
        if self._buffer:
            tail = bytes(self._buffer).rstrip(b"\r")
            self._buffer, self._scanned = bytearray(), 0
            self._line(tail, events)
        self._event, self._data, self._data_size = "", [], 0
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event, self._data, self._data_size = "", [], 0
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += len(raw)
            if self._data_size > self._limit:
                raise SSETooLarge(f"an event longer than {self._limit} bytes")
            self._data.append(value)
        elif field == "event":
            self._event = value
