"""A strict HTTP/1.1 response reader for the upstream client (sans I/O): what `transport.py` reads every
response with, in place of h11's event machinery.

A connection owns one `ResponseReader`. Per exchange: `start(head_request)`, then `next_head()` until it
gives the final response's `Head` (1xx answers are skipped), then `next_body()` until it gives `b""` (the
end of the body); `None` from either means "feed me": the caller reads the socket and calls `feed(data)`
(`b""` is EOF). `reusable()` then says whether the connection may carry the next request.

The grammar is h11's (tests/test_wire_differential.py feeds both the same bytes, split at every
boundary, and checks that they agree), with a few deliberate strictures for an upstream we do not trust:

- status line `HTTP/d.d SP ddd [SP reason]`; header lines `token ":" OWS value OWS`; lines end in CRLF or
  LF; no NUL, bare CR, VT or FF anywhere in the head;
- obs-fold (a header line starting with SP or HTAB) is refused, not unfolded (h11 unfolds it);
- the head (status line and headers) is at most `MAX_RESPONSE_HEAD` bytes and `MAX_HEADERS` lines;
- `Content-Length`: digits only (at most 20), repeated values must agree; `Transfer-Encoding`: `chunked`
  only, once, and it beats a `Content-Length`;
- chunked bodies: chunk-size lines as h11 reads them (hex, extensions ignored), a chunk larger than
  `MAX_CHUNK` refused at its size line, the CRLF after each chunk checked, trailers validated as header
  lines and dropped; without either header the body runs to EOF;
- HEAD, 204 and 304 have no body; 101 is refused (we never ask to switch protocols);
- keep-alive: HTTP/1.1 or later and no `close` among the `Connection` tokens; the connection is
  reusable only when the body ended, the server allowed it and nothing follows the response.

Every violation is an `httpx.RemoteProtocolError`, what the h11 path raised, and its message never quotes
the offending bytes (a header can carry key material).
"""

from __future__ import annotations

import re
from typing import Final

import httpx

from apikeyrouter.adapters.headers import LowerHeaders

__all__ = ["MAX_CHUNK", "MAX_HEADERS", "MAX_RESPONSE_HEAD", "Head", "ResponseReader"]

# An upstream's status line and headers together may take this much (h11's default, 16 KiB, refuses some
# providers' long rate-limit and tracing headers; httpcore allows 100 KiB).
MAX_RESPONSE_HEAD: Final = 128 * 1024
MAX_HEADERS: Final = 500  # header lines of one head (or trailer section); providers send a few dozen
MAX_CHUNK: Final = 64 * 1024 * 1024  # one chunk of a chunked body: beyond any answer we would read

_BLANK = re.compile(rb"\n\r?\n")  # the end of a head: where h11 finds it
_STATUS = re.compile(r"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (.*))?")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_LENGTH = re.compile(r"[0-9]{1,20}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_NAMES: dict[str, str] = {}  # header name as received -> lowercase, for every name already validated
_MAX_NAMES = 4096

# Reader states.
_HEAD: Final = 0
_LENGTH_BODY: Final = 1
_CHUNK_SIZE: Final = 2
_CHUNK_DATA: Final = 3
_CHUNK_END: Final = 4
_TRAILERS: Final = 5
_TO_EOF: Final = 6
_DONE: Final = 7


def _error(message: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(message)


class Head:
    """A final response's status line and headers: `headers` lowercase-keyed (repeats joined with ", "),
    `items` as received (names in their case, values latin-1 text; built only when asked for: the httpx
    interface reads them, the direct path reads `headers`)."""

    __slots__ = ("_lines", "headers", "reason", "status", "version")

    def __init__(self, status: int, reason: str, version: str, headers: LowerHeaders, lines: list[str]) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self._lines = lines  # the status line, then the header lines (validated by `_fields`)

    @property
    def items(self) -> list[tuple[str, str]]:
        split = (line.partition(":") for line in self._lines[1:])
        return [(name, value.strip(" \t")) for name, _, value in split]


def _lower_name(name: str) -> str:
    lower = _NAMES.get(name)
    if lower is not None:
        return lower
    if _TOKEN.fullmatch(name) is None:
        raise _error("illegal header name in the response")
    if len(_NAMES) >= _MAX_NAMES:
        _NAMES.clear()
    lower = _NAMES[name] = name.lower()
    return lower


def _fields(lines: list[str], start: int) -> LowerHeaders:
    """Header (or trailer) lines from `lines[start:]`, validated; obs-fold refused."""
    if len(lines) - start > MAX_HEADERS:
        raise _error(f"more than {MAX_HEADERS} header lines in the response")
    headers = LowerHeaders()
    names = _NAMES
    for i in range(start, len(lines)):
        line = lines[i]
        name, colon, value = line.partition(":")
        if not colon:
            raise _error("a header line without a colon in the response")
        if line[0] in " \t":
            raise _error("an obs-folded header line in the response")
        lower = names.get(name) or _lower_name(name)
        value = value.strip(" \t")
        if lower in headers:
            headers[lower] = f"{headers[lower]}, {value}"
        else:
            headers[lower] = value
    return headers


def _lines(block: bytes) -> list[str]:
    """A head's lines (terminator included in `block`), checked for bytes no line may hold."""
    # What no field, status line or reason may hold: NUL, VT, FF, a CR not before an LF. Found with byte
    # searches (memchr speed); the one regex alternation that said the same cost 9 µs on a 12-line head.
    crlf = block.count(b"\r\n")
    if b"\x00" in block or b"\x0b" in block or b"\x0c" in block or block.count(b"\r") != crlf:
        raise _error("illegal bytes in the response head")
    text = block.decode("latin-1")
    if crlf == block.count(b"\n"):  # every line ends in CRLF, as servers send them: one split
        lines = text.split("\r\n")
        del lines[-2:]
        return lines
    lines = text.split("\n")
    del lines[-2:]  # the terminator's two line ends
    return [line[:-1] if line[-1:] == "\r" else line for line in lines]


def parse_head(block: bytes) -> Head:
    """One head: status line and header lines, through the blank line."""
    lines = _lines(block)
    if not lines:
        raise _error("no status line in the response")
    match = _STATUS.fullmatch(lines[0])
    if match is None:
        raise _error("illegal status line in the response")
    version, code, reason = match.groups()
    return Head(int(code), reason or "", version, _fields(lines, 1), lines)


def _framing(headers: LowerHeaders) -> tuple[int | None, bool]:
    """The body's framing headers, validated: (content-length or None, chunked)."""
    length = headers.get("content-length")
    size = None
    if length is not None:
        if "," in length:  # repeated (joined by `_fields`, each value already stripped) or a list: must agree
            values = {v.strip(" \t") for v in length.split(",")}
            if len(values) != 1:
                raise _error("conflicting Content-Length headers in the response")
            length = values.pop()
        if _LENGTH.fullmatch(length) is None:
            raise _error("a bad Content-Length in the response")
        size = int(length)
    coding = headers.get("transfer-encoding")
    if coding is not None and coding.lower() != "chunked":
        raise _error("a Transfer-Encoding other than one chunked in the response")
    return size, coding is not None


class ResponseReader:
    """The reading side of one HTTP/1.1 connection (see the module docstring)."""

    __slots__ = ("_buf", "_crlf", "_keep_alive", "_left", "_no_body", "_pos", "_scan", "_state", "eof")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # bytes of `_buf` consumed
        self._scan = 0  # where to resume looking for the end of a head or a line
        self._state = _DONE
        self._left = 0  # bytes left of a content-length body or of the current chunk
        self._crlf = 0  # bytes of a chunk's closing CRLF seen
        self._keep_alive = False
        self._no_body = False
        self.eof = False

    # -- input --------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes off the socket; `b""`: the peer closed its side."""
        if not data:
            self.eof = True
            return
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[pos:] + data
        self._scan = max(0, self._scan - pos)
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def start(self, *, head_request: bool) -> None:
        """A request went out: read its response next (`head_request`: it was a HEAD, so no body)."""
        self._state = _HEAD
        self._no_body = head_request
        self._scan = self._pos

    def reusable(self) -> bool:
        """The response was read to its end, the server keeps the connection open, and nothing follows."""
        return self._state == _DONE and self._keep_alive and not self.eof and self._pos == len(self._buf)

    # -- the head -----------------------------------------------------------------------------------------

    def _block(self) -> bytes | None:
        """The bytes through the next blank line (consumed), or None: more are needed."""
        buf, pos = self._buf, self._pos
        match = _BLANK.search(buf, max(pos, self._scan - 2))
        if match is None:
            if len(buf) - pos > MAX_RESPONSE_HEAD:
                raise _error(f"a response head larger than {MAX_RESPONSE_HEAD} bytes")
            self._scan = len(buf)
            return None
        end = match.end()
        if end - pos > MAX_RESPONSE_HEAD:
            raise _error(f"a response head larger than {MAX_RESPONSE_HEAD} bytes")
        self._pos = self._scan = end
        return buf[pos:end]

    def next_head(self) -> Head | None:
        """The final response's head, or None: feed more bytes. Informational (1xx) heads are skipped."""
        while True:
            buf, pos = self._buf, self._pos
            if buf[pos : pos + 1] == b"\n" or buf[pos : pos + 2] == b"\r\n":
                raise _error("no status line in the response")
            block = self._block()
            if block is None:
                if self.eof:
                    if self._pos == len(self._buf):
                        raise _error("Server disconnected without sending a response.")
                    raise _error("peer closed connection in the middle of the response head")
                return None
            head = parse_head(block)
            length, chunked = _framing(head.headers)  # checked on 1xx heads too, as h11 does
            if head.status >= 200:
                self._frame(head, length, chunked)
                return head
            if head.status == 101:
                raise _error("101 Switching Protocols without a request to switch")
            if head.status < 100:
                raise _error("a status code below 100 in the response")

    def _frame(self, head: Head, length: int | None, chunked: bool) -> None:
        connection = head.headers.get("connection")
        close = connection is not None and "close" in [t.strip(" \t") for t in connection.lower().split(",")]
        # Content-Length beside chunked: the chunks frame the body (as h11 reads it), but RFC 9112 6.3 calls
        # such a message an error to be closed after, since an intermediary may have framed it otherwise.
        self._keep_alive = not close and head.version >= "1.1" and not (chunked and length is not None)
        if self._no_body or head.status in (204, 304):
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
            self._scan = self._pos
        elif length is not None:
            self._left = length
            self._state = _LENGTH_BODY if self._left else _DONE
        else:
            self._state = _TO_EOF
            self._keep_alive = False

    # -- the body -----------------------------------------------------------------------------------------

    def next_body(self) -> bytes | None:
        """The next piece of the body (non-empty bytes), `b""` at its end, or None: feed more bytes."""
        state = self._state
        if state == _LENGTH_BODY:
            buf, pos = self._buf, self._pos
            n = min(self._left, len(buf) - pos)
            if n == 0:
                if self.eof:
                    raise _error("peer closed connection without sending complete message body")
                return None
            self._pos = pos + n
            self._left -= n
            if not self._left:
                self._state = _DONE
            return buf[pos : pos + n] if n < len(buf) else buf
        if state == _DONE:
            return b""
        if state == _TO_EOF:
            buf, pos = self._buf, self._pos
            if pos < len(buf):
                self._pos = len(buf)
                return buf[pos:] if pos else buf
            if self.eof:
                self._state = _DONE
                return b""
            return None
        if state == _HEAD:
            raise RuntimeError("next_body() before the response head was read")
        return self._chunked()

    def _chunked(self) -> bytes | None:
        while True:
            state, buf, pos = self._state, self._buf, self._pos
            if state == _CHUNK_DATA:
                n = min(self._left, len(buf) - pos)
                if n == 0:
                    break
                self._pos = pos + n
                self._left -= n
                if not self._left:
                    self._state, self._crlf = _CHUNK_END, 0
                return buf[pos : pos + n]
            if state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", max(pos, self._scan - 1))
                if end < 0:
                    if len(buf) - pos > MAX_RESPONSE_HEAD:
                        raise _error("a chunk-size line too long in the response")
                    self._scan = len(buf)
                    break
                match = _CHUNK_LINE.fullmatch(buf, pos, end + 2)
                if match is None:
                    raise _error("illegal chunk-size line in the response")
                size = int(match.group(1), 16)
                if size > MAX_CHUNK:
                    raise _error(f"a chunk larger than {MAX_CHUNK} bytes in the response")
                self._pos = self._scan = end + 2
                self._left = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_END:
                while self._crlf < 2 and pos < len(buf):
                    if buf[pos] != b"\r\n"[self._crlf]:
                        raise _error("a chunk not followed by CRLF in the response")
                    pos += 1
                    self._crlf += 1
                self._pos = self._scan = pos
                if self._crlf < 2:
                    break
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buf[pos : pos + 1] == b"\n" or buf[pos : pos + 2] == b"\r\n":
                    self._pos = pos + (1 if buf[pos] == 0x0A else 2)
                    self._state = _DONE
                    return b""
                block = self._block()
                if block is None:
                    break
                _fields(_lines(block), 0)  # validated, then dropped: nothing here reads trailers
                self._state = _DONE
                return b""
            else:  # pragma: no cover - next_body dispatches only the chunked states here
                raise AssertionError(state)
        if self.eof:
            raise _error("peer closed connection without sending complete message body (incomplete chunked read)")
        return None

    def finish_buffered(self) -> bool:
        """Read what is left of the body from the buffer only (no I/O): True when the response ended there
        and the connection may carry the next request."""
        try:
            while True:
                piece = self.next_body()
                if piece is None:
                    return False
                if not piece:
                    return self.reusable()
        except httpx.RemoteProtocolError:
            return False
