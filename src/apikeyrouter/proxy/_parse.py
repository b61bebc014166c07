"""Reading requests for the proxy's server (`_conn`): strict HTTP/1.1 request heads and body framing, sans-I/O.

Why not h11 here: h11 parses a request head through a line splitter, a regular expression per line, a
validation pass that builds a `Headers` object, an event object and a state machine with triggers, about a
quarter of the server's CPU per proxied request. This reader checks the whole header block with one
regular expression (C speed), splits it once, and looks at the few headers framing depends on. The client
side (`adapters/transport.py`) and the simulator keep h11.

What it accepts is what h11 accepts (`tests/test_http_parse.py` checks it against h11 on generated and
hand-written requests, split at every byte), except where it is stricter on purpose, because a front proxy
that reads a request differently from us is how requests are smuggled (RFC 9112 sections 6.1, 6.3, 11.2):

- lines end in CRLF: a bare LF is a 400 (h11 takes `\\n` as a line end);
- obs-fold (a header line starting with a space or tab) is a 400 (h11 joins it to the line before);
- `Content-Length` at most once and a plain number: two of them, or a list (`5, 5`), is a 400;
- `Content-Length` and `Transfer-Encoding` together are a 400 (h11 lets `Transfer-Encoding` win);
- `Transfer-Encoding` is exactly `chunked` (any case), once, else a 501, as h11;
- HTTP/1.0 and HTTP/1.1 only: any other version is a 505 (h11 takes any `HTTP/d.d`);
- a chunk-size line is at most `MAX_CHUNK_LINE` bytes and its extensions printable (h11: any length, any
  byte but LF).

Header names are tokens, values visible bytes (and obs-text) with inner spaces or tabs, never NUL, CR, LF,
VT or FF; a request line is `method SP target SP HTTP/d.d` with a visible-ASCII target; HTTP/1.1 needs
exactly one `Host` (and no version may send two). A head larger than the limit, complete or not, is a 431.
"""

from __future__ import annotations

import re

__all__ = ["BODY", "DONE", "HEAD", "FramingError", "Head", "HeadError", "RequestParser"]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_VALUE = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"  # \s in a bytes pattern: space, \t, \n, \r, \f, \v
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*(?:" + _VALUE + rb")?[ \t]*\r\n)*")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[\t\x20-\x7e\x80-\xff]*)?[ \t]*")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_NAME = re.compile(_TOKEN)
_NAMES: dict[bytes, bytes] = {}  # a header name as received -> lowercase, for each name found to be a token
_MAX_NAMES = 1024  # names recur on every request; the bound only guards against a client inventing them
MAX_CHUNK_LINE = 4096  # a chunk-size line and its extensions
MAX_CONTENT_LENGTH_DIGITS = 20  # as h11
_OWS = b" \t"


class HeadError(Exception):
    """A request head that is refused, with the status to answer (400, 431, 501 or 505)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FramingError(Exception):
    """A request body that breaks its framing (a bad chunk, a connection closed before its end)."""


class _State:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


HEAD, BODY, DONE, BROKEN = _State("HEAD"), _State("BODY"), _State("DONE"), _State("BROKEN")


class Head:
    """A parsed request head. Header names are lower-case; values have their surrounding spaces removed."""

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "expect_continue",
        "headers",
        "method",
        "size",
        "target",
        "version",
    )

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.version = version  # b"1.0" or b"1.1"
        self.headers = headers
        self.content_length: int | None = None
        self.chunked = False
        self.close = False  # `Connection: close`
        self.expect_continue = False  # `Expect: 100-continue` (HTTP/1.1)
        self.size = 0  # bytes on the wire, the blank line included


def parse_head(head: bytes) -> Head:
    """`head`: a request head up to the CRLF that ends its last header line (the blank line not included)."""
    eol = head.find(b"\r\n")
    line = _REQUEST_LINE.fullmatch(head, 0, eol)
    if line is None:
        raise HeadError(400, "illegal request line")  # never quoted: a target may carry a key
    method, target, version = line.groups()
    if version != b"1.1" and version != b"1.0":
        raise HeadError(505, f"HTTP/{version.decode()} is not supported (HTTP/1.1 and HTTP/1.0 are)")
    headers = _fields(head, eol + 2)
    if headers is None:
        raise HeadError(400, _field_problem(head[eol + 2 :]))
    out = Head(method, target, version, headers)
    hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            _content_length(out, value)
        elif name == b"transfer-encoding":
            if out.chunked:
                raise HeadError(501, "multiple Transfer-Encoding headers")
            if value != b"chunked":
                raise HeadError(501, "only Transfer-Encoding: chunked is supported")
            out.chunked = True
        elif name == b"connection":
            if b"close" in value.lower():
                out.close = True
        elif name == b"expect" and version == b"1.1" and _continue(value):
            out.expect_continue = True
    if out.chunked and out.content_length is not None:
        raise HeadError(400, "both Content-Length and Transfer-Encoding: the body's length is ambiguous")
    if hosts > 1:
        raise HeadError(400, "more than one Host header")
    if hosts == 0 and version == b"1.1":
        raise HeadError(400, "missing the Host header (HTTP/1.1 requires it)")
    return out


def _fields(head: bytes, start: int) -> list[tuple[bytes, bytes]] | None:
    """The header lines of `head[start:]` as (lowercase name, value without its surrounding spaces), or
    None when a line is not `token ":" value` with a value free of NUL, CR, LF, VT and FF: what `_FIELDS`
    matches, checked with byte counts (every CR and every LF in a CRLF) and a cache of names already
    found to be tokens, instead of the regex's walk over every byte (3-4 µs for four short lines)."""
    if start >= len(head):
        return []
    crlf = head.count(b"\r\n", start)
    if (
        not head.endswith(b"\r\n")
        or head.count(b"\r", start) != crlf
        or head.count(b"\n", start) != crlf
        or head.find(b"\x00", start) >= 0
        or head.find(b"\x0b", start) >= 0
        or head.find(b"\x0c", start) >= 0
    ):
        return None
    names = _NAMES
    headers: list[tuple[bytes, bytes]] = []
    for field in head[start:-2].split(b"\r\n"):
        name, colon, value = field.partition(b":")
        if not colon:
            return None
        lower = names.get(name)
        if lower is None:
            if _NAME.fullmatch(name) is None:
                return None
            if len(names) >= _MAX_NAMES:
                names.clear()
            lower = names[name] = name.lower()
        value = value.strip(_OWS)
        if lower == b"transfer-encoding":
            value = value.lower()  # as h11 hands it over
        headers.append((lower, value))
    return headers


def _continue(value: bytes) -> bool:
    return b"100-continue" in (v.strip() for v in value.lower().split(b","))


def _content_length(head: Head, value: bytes) -> None:
    if head.content_length is not None:
        raise HeadError(400, "more than one Content-Length header")
    if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:  # isdigit on bytes: ASCII digits only
        raise HeadError(400, "bad Content-Length: expected a number")
    head.content_length = int(value)


def _field_problem(fields: bytes) -> str:
    """Which header line is wrong (only for the error message: the block did not match)."""
    for field in fields.split(b"\r\n"):
        if _FIELDS.fullmatch(field + b"\r\n") is None:
            if field[:1] in (b" ", b"\t"):
                return "obsolete line folding (a header line starting with a space or tab) is not accepted"
            name, colon, _ = field.partition(b":")
            if colon and len(name) <= 64 and re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) is not None:
                return f"illegal header line ({name.decode()})"  # the name only: values carry credentials
            return "illegal header line"
    return "illegal header block"  # pragma: no cover - a block whose every line matches matches


class RequestParser:
    """One connection's requests, one at a time: `feed` bytes as they come (b"" at EOF), `head()` for the
    next request's head, then `read()` its body until `state` is `DONE`, then `next_request()`.

    Pipelined bytes stay in the buffer for the next request. After an error the parser is `BROKEN`: the
    connection answers and closes."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_phase",
        "_remaining",
        "_scanned",
        "closed",
        "continue_wanted",
        "max_head",
        "state",
    )

    def __init__(self, max_head: int) -> None:
        self.max_head = max_head
        self._buf = bytearray()
        self._scanned = 0  # how far the search for the head's end has looked
        self.closed = False  # EOF was fed
        self.state = HEAD
        self.continue_wanted = False  # the client waits for `100 Continue` before it sends its body
        self._remaining = 0  # content-length: bytes still to come
        self._chunk_phase = 0  # chunked: 0 size line, 1 data, 2 the CRLF after data, 3 trailers; -1 not chunked
        self._chunk_left = 0

    def feed(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self.closed = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def head(self) -> Head | None:
        """The next request's head, or None: more bytes are needed (or, `closed` and nothing buffered, the
        client ended the connection between requests). Raises `HeadError`."""
        assert self.state is HEAD
        buf = self._buf
        start = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            self._scanned = len(buf)
            self._incomplete(start)
            return None
        size = end + 4
        if size > self.max_head:
            self.state = BROKEN
            raise HeadError(431, "request head too large")
        raw = bytes(buf[: end + 2])
        del buf[:size]
        self._scanned = 0
        try:
            head = parse_head(raw)
        except HeadError:
            self.state = BROKEN
            raise
        head.size = size
        self._begin_body(head)
        return head

    def _incomplete(self, start: int) -> None:
        buf = self._buf
        if not buf:
            return
        problem = None
        if buf[0] < 0x21:  # a request line never starts with a control byte or a space (a TLS hello does)
            problem = HeadError(400, "illegal request line")
        elif len(buf) > self.max_head:
            problem = HeadError(431, "request head too large")
        elif _BARE_LF.search(buf, start) is not None:  # only what came since the last look
            problem = HeadError(400, "a line ends in a bare LF (HTTP lines end in CRLF)")
        elif self.closed:
            problem = HeadError(400, "the connection closed in the middle of a request head")
        if problem is not None:
            self.state = BROKEN
            raise problem

    def _begin_body(self, head: Head) -> None:
        if head.chunked:
            self._chunk_phase, self._chunk_left = 0, 0
            self.state = BODY
        elif head.content_length:
            self._chunk_phase, self._remaining = -1, head.content_length
            self.state = BODY
        else:
            self.state = DONE
        self.continue_wanted = head.expect_continue and self.state is BODY

    def read(self) -> bytes:
        """The body bytes in hand (perhaps none); `state` is `DONE` once the body ended. Raises `FramingError`."""
        if self.state is not BODY:
            return b""
        buf = self._buf
        if self._chunk_phase < 0:
            take = min(self._remaining, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            self._remaining -= take
            if self._remaining == 0:
                self.state = DONE
        else:
            data = self._read_chunked()
        if data:
            self.continue_wanted = False
        if self.state is BODY and self.closed and not buf:
            self.state = BROKEN
            raise FramingError("the connection closed in the middle of the request body")
        return data

    def _read_chunked(self) -> bytes:
        buf = self._buf
        parts: list[bytes] = []
        try:
            while buf:
                phase = self._chunk_phase
                if phase == 1:
                    take = min(self._chunk_left, len(buf))
                    parts.append(bytes(buf[:take]))
                    del buf[:take]
                    self._chunk_left -= take
                    if self._chunk_left == 0:
                        self._chunk_phase = 2
                elif phase == 2:
                    if len(buf) < 2:
                        if buf[:1] != b"\r":
                            raise FramingError("a chunk's data is not followed by CRLF")
                        break
                    if buf[:2] != b"\r\n":
                        raise FramingError("a chunk's data is not followed by CRLF")
                    del buf[:2]
                    self._chunk_phase = 0
                elif not self._chunk_line(phase):
                    break
        except FramingError:
            self.state = BROKEN
            raise
        return b"".join(parts)

    def _chunk_line(self, phase: int) -> bool:
        """A chunk-size line (phase 0) or a trailer line (phase 3); False: not all here yet."""
        buf = self._buf
        eol = buf.find(b"\r\n")
        if eol < 0:
            if len(buf) > (MAX_CHUNK_LINE if phase == 0 else self.max_head):
                raise FramingError("a chunk-size or trailer line is too long")
            if b"\n" in buf:
                raise FramingError("a line ends in a bare LF (HTTP lines end in CRLF)")
            return False
        line = bytes(buf[:eol])
        del buf[: eol + 2]
        if phase == 0:
            match = _CHUNK_LINE.fullmatch(line)
            if match is None or eol > MAX_CHUNK_LINE:
                raise FramingError(f"illegal chunk-size line: {line[:100]!r}")
            size = int(match.group(1), 16)
            self._chunk_left = size
            self._chunk_phase = 1 if size else 3
        elif not line:
            self.state = DONE  # the blank line after the trailers: the body is over
            self._chunk_phase = 0
            return False
        elif _FIELDS.fullmatch(line + b"\r\n") is None:
            raise FramingError(f"illegal trailer line: {line[:100]!r}")
        return True

    def next_request(self) -> None:
        """After a request's body is read: on to the next one (what came after it is kept)."""
        assert self.state is DONE
        self.state = HEAD
        self.continue_wanted = False
