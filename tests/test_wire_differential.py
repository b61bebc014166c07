"""Our response reader (adapters/_wire.py) against h11, fed the same bytes split the same way: they must
agree on accept or reject, and on an accepted response's status, reason, headers, body and whether the
connection may be reused. The one deliberate difference: a header line folded onto the previous one
(obs-fold), which h11 unfolds and we refuse.

Responses are hypothesis-built from a grammar of valid and broken parts (status lines, header lines,
framing headers, chunked bodies, trailers, 1xx answers, bytes after the response, a cut anywhere), and
hand-written ones are split at every byte boundary."""

from __future__ import annotations

import itertools
from typing import Any

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apikeyrouter.adapters._wire import MAX_CHUNK, MAX_HEADERS, MAX_RESPONSE_HEAD, ResponseReader

Outcome = tuple[Any, ...]
REJECT: Outcome = ("reject",)
FRAMING = {b"content-length", b"transfer-encoding"}  # h11 rewrites these (lowercased, deduplicated)


def _items(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in items if name.lower() not in FRAMING]


def h11_reads(chunks: list[bytes], *, head_request: bool) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    conn.send(h11.Request(method="HEAD" if head_request else "GET", target="/", headers=[("host", "up")]))
    conn.send(h11.EndOfMessage())
    pending = [*chunks, b""]  # b"": EOF, fed only when the reader asks for more
    status: Outcome = ()
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(pending.pop(0))
            elif type(event) is h11.Response:
                status = (event.status_code, event.reason, _items(event.headers.raw_items()))
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
            elif type(event) is h11.ConnectionClosed:
                return REJECT
    except h11.ProtocolError:
        return REJECT
    leftover, closed = conn.trailing_data
    reuse = conn.our_state is h11.DONE and conn.their_state is h11.DONE and not leftover and not closed
    return ("ok", *status, body, reuse and not any(pending))


def ours_reads(chunks: list[bytes], *, head_request: bool) -> Outcome:
    reader = ResponseReader()
    reader.start(head_request=head_request)
    pending = [*chunks, b""]
    body = b""
    try:
        head = reader.next_head()
        while head is None:
            reader.feed(pending.pop(0))
            head = reader.next_head()
        while (piece := reader.next_body()) != b"":
            if piece is None:
                reader.feed(pending.pop(0))
            else:
                body += piece
    except httpx.RemoteProtocolError:
        return REJECT
    items = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in head.items]
    return (
        "ok",
        head.status,
        head.reason.encode("latin-1"),
        _items(items),
        body,
        reader.reusable() and not any(pending),
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c for c in cuts if 0 < c < len(data))})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def assert_agree(data: bytes, cuts: list[int], *, head_request: bool = False, folded: bool = False) -> Outcome:
    chunks = split(data, cuts)
    ours = ours_reads(chunks, head_request=head_request)
    if folded:
        assert ours == REJECT, data
        return ours
    theirs = h11_reads(chunks, head_request=head_request)
    if theirs != REJECT and _framed_both_ways(data):
        theirs = (*theirs[:-1], False)  # ours closes after such a message (RFC 9112 6.3); h11 keeps it
    assert ours == theirs, (data, chunks)
    return ours


def _framed_both_ways(data: bytes) -> bool:
    """Whether the final (non-1xx) head has both Content-Length and Transfer-Encoding."""
    for head in data.lower().replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = head.split(b"\n")
        if lines[0][9:10] == b"1":  # `http/1.1 1xx`: an interim head, the final one follows
            continue
        names = {line.split(b":", 1)[0] for line in lines[1:]}
        return b"content-length" in names and b"transfer-encoding" in names
    return False


# -- hypothesis: a grammar of valid and broken responses ------------------------------------------------

# (valid, broken) choices for each part; a response is drawn clean (valid parts only) or noisy.
VERSIONS = (["1.1", "1.1", "1.0", "2.0"], ["0.9", "1.x", "11"])
CODES = (["200", "200", "204", "304", "404", "500"], ["101", "099", "2000", "20", "abc"])
REASONS = ([" OK", "", " ", " Not Found", " a\tb", " \x80\xff", "  two"], [" bad\x00", " bad\rx", " \x0b"])
ENDS = (["\r\n", "\r\n", "\n"], ["\r\r\n"])
NAMES = (["x-a", "X-Request-Id", "content-type", "Connection", "x-a"], ["bad name", "", "é", "x-\x00", "x;y"])
VALUES = (["v", "a b", "\t v \t", "x\x01y", "\x80", "", "x, y", "é"], ["a\x00b", "a\x0cb", "a\rb"])
CONNECTION = (["close", "keep-alive", "Close", "upgrade, close", "", "closed"], [])
CODINGS = (["chunked", "Chunked", " chunked "], ["gzip", "chunked, chunked", "", "gzip, chunked"])
LENGTHS = (["auto", "auto", " auto ", "auto, auto"], ["abc", "", "-1", "1" * 21, "3, 4", "0", "+3", "\u00b2"])
SEPARATORS = ([":", ": ", ": ", ":\t", ":  "], [" :"])
INTERIM = (["100", "103", "199"], [])
SIZES = (
    ["{:x}", "{:X}", "{:04x}", "{:x};a=b", "{:x} ", "{:x};\x01", "{:x}; x\r"],
    ["zz", "", "{:x}0", "1" * 21, " {:x}"],
)
CHUNK_ENDS = ([b"\r\n"], [b"\n", b"xx", b"\r"])
TRAILERS = ([b"", b"", b"x-t: 1\r\n", b"x-t: 1\n"], [b"bad trailer\r\n", b" fold\r\n"])
FOLDS = [" ", "\t"]


def pick(draw: st.DrawFn, noisy: bool, choices: tuple[list[Any], list[Any]]) -> Any:
    good, bad = choices
    if noisy and bad and draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from(bad))
    return draw(st.sampled_from(good))


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """(bytes, head_request, folded)."""
    noisy = draw(st.booleans())
    end = pick(draw, noisy, ENDS)
    out: list[str] = []
    folded = False
    if draw(st.integers(0, 5)) == 0:
        out.append(f"HTTP/1.1 {pick(draw, noisy, INTERIM)} Continue{end}{end}")
    out.append(f"HTTP/{pick(draw, noisy, VERSIONS)} {pick(draw, noisy, CODES)}{pick(draw, noisy, REASONS)}{end}")
    body = draw(st.binary(max_size=40))
    chunked = False
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        sep = pick(draw, noisy, SEPARATORS)
        if kind == 0:
            value = pick(draw, noisy, LENGTHS).replace("auto", str(len(body)))
            out.append(f"Content-Length{sep}{value}{end}")
        elif kind == 1:
            chunked = True
            out.append(f"Transfer-Encoding{sep}{pick(draw, noisy, CODINGS)}{end}")
        elif kind == 2:
            out.append(f"Connection{sep}{pick(draw, noisy, CONNECTION)}{end}")
        else:
            line = f"{pick(draw, noisy, NAMES)}{sep}{pick(draw, noisy, VALUES)}{end}"
            folded |= line[0] in FOLDS  # an empty name before " :": an obs-fold line, which h11 unfolds
            out.append(line)
        if noisy and draw(st.integers(0, 12)) == 0:
            folded = True
            out.append(f"{draw(st.sampled_from(FOLDS))}folded{end}")
    out.append(end)
    data = "".join(out).encode("latin-1")
    data += chunked_body(draw, noisy, body) if chunked and draw(st.integers(0, 5)) else body
    if draw(st.integers(0, 4)) == 0:
        data += draw(st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"\r\n", b"x"]))
    if noisy and draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, draw(st.integers(0, 6)) == 0, folded


def chunked_body(draw: st.DrawFn, noisy: bool, body: bytes) -> bytes:
    out = b""
    rest = body
    while rest:
        n = draw(st.integers(1, len(rest)))
        size = pick(draw, noisy, SIZES).format(n)
        out += f"{size}\r\n".encode("latin-1") + rest[:n] + pick(draw, noisy, CHUNK_ENDS)
        rest = rest[n:]
    out += b"0\r\n" + pick(draw, noisy, TRAILERS)
    return out + pick(draw, noisy, ([b"\r\n", b"\r\n", b"\n"], []))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(0, 400), max_size=6))
def test_our_reader_agrees_with_h11_on_generated_responses(response: tuple[bytes, bool, bool], cuts: list[int]) -> None:
    data, head_request, folded = response
    assert_agree(data, cuts, head_request=head_request, folded=folded)


# -- hand-written responses, split at every byte boundary ------------------------------------------------

CL = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": "b"}\n'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    b"b\r\ndata: one\n\n\r\n"
    b"E;ext=1\r\ndata: [DONE]\n\n\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
GOOD = [
    ("content-length", CL, False),
    ("chunked with an extension and a trailer", CHUNKED, False),
    ("a 100 Continue first", b"HTTP/1.1 100 Continue\r\n\r\n" + CL, False),
    ("LF line ends", CL.replace(b"\r\n", b"\n"), False),
    ("no reason phrase", b"HTTP/1.1 204\r\n\r\n", False),
    ("HEAD: no body despite the length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
    ("304 ignores its length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False),
    ("read to close", b"HTTP/1.1 200 OK\r\n\r\nuntil the end", False),
    ("HTTP/1.0 is not kept alive", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("Connection: close", b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\nok", False),
    ("repeated equal lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok", False),
    (
        "chunked beats a length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        False,
    ),
    (
        "repeated headers and obs-text",
        b"HTTP/1.1 200 \xe9t\xe9\r\nX-A: 1\r\nx-a: \xff 2\t\r\nContent-Length: 0\r\n\r\n",
        False,
    ),
    ("bytes after the response: not reused", CL + b"HTTP/1.1 200 OK\r\n", False),
]
BAD = [
    ("a bad status line", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("an empty line first", b"\r\n" + CL),
    ("a space before the colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"),
    ("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"),
    ("a bare CR", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"),
    ("conflicting lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk"),
    ("a length that is not digits", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
    ("gzip framing", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    (
        "two Transfer-Encodings",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("a body cut short", CL[:-3]),
    ("a chunk not closed by CRLF", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n"),
    (
        "other bytes where a chunk's CRLF goes",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokab0\r\n\r\n",
    ),
    ("a bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\nok\r\n0\r\n\r\n"),
    ("a chunked body cut short", CHUNKED[:-5]),
    ("a bad trailer", CHUNKED.replace(b"X-Trailer: yes", b"X Trailer yes")),
    ("101 without an upgrade asked", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
    ("a status below 100", b"HTTP/1.1 099 Odd\r\n\r\n"),
    ("nothing at all", b""),
    ("half a head", b"HTTP/1.1 200 OK\r\nContent-"),
]


@pytest.mark.parametrize(("data", "head_request"), [(d, h) for _, d, h in GOOD], ids=[n for n, _, _ in GOOD])
def test_valid_responses_read_alike_however_they_are_split(data: bytes, head_request: bool) -> None:
    for cut in range(len(data) + 1):
        assert assert_agree(data, [cut], head_request=head_request)[0] == "ok"
    assert_agree(data, list(range(len(data))), head_request=head_request)  # one byte at a time


@pytest.mark.parametrize("data", [d for _, d in BAD], ids=[n for n, _ in BAD])
def test_malformed_responses_are_refused_alike_however_they_are_split(data: bytes) -> None:
    for cut in range(len(data) + 1):
        assert assert_agree(data, [cut]) == REJECT
    assert_agree(data, list(range(len(data))))


def test_a_kept_alive_response_read_whole_allows_reuse_and_one_that_closes_does_not() -> None:
    assert ours_reads([CL], head_request=False)[-1] is True
    assert ours_reads([CHUNKED], head_request=False)[-1] is True
    assert ours_reads([CL.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n")], head_request=False)[-1] is False


# -- where we are stricter than h11 ----------------------------------------------------------------------


def test_an_obs_folded_header_is_refused() -> None:
    folded = b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n"
    assert h11_reads([folded], head_request=False)[0] == "ok"  # h11 unfolds it
    assert ours_reads([folded], head_request=False) == REJECT


def test_a_response_framed_both_ways_is_read_by_its_chunks_and_its_connection_not_kept() -> None:
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    reader = ResponseReader()
    reader.start(head_request=False)
    reader.feed(both)
    assert reader.next_head() is not None
    assert reader.next_body() == b"hi" and reader.next_body() == b""
    assert not reader.reusable()  # h11 would keep it: RFC 9112 6.3 says close after


def test_a_head_beyond_the_limits_is_refused_before_it_is_buffered_whole() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"v" * MAX_RESPONSE_HEAD)
    with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
        reader.next_head()
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n"
    assert ours_reads([many], head_request=False) == REJECT


def test_a_chunk_larger_than_the_limit_is_refused_at_its_size_line() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_CHUNK + 1))
    assert reader.next_head() is not None
    with pytest.raises(httpx.RemoteProtocolError, match="chunk larger"):
        reader.next_body()


def test_an_error_never_quotes_the_bytes_it_refused() -> None:
    secretish = b"sk-live-0123456789abcdef"
    for data in (
        b"HTTP/1.1 200 OK\r\nAuthorization: " + secretish + b"\x00\r\n\r\n",
        b"HTTP/1.1 2000 " + secretish + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + secretish + b"\r\n\r\n",
    ):
        reader = ResponseReader()
        reader.start(head_request=False)
        reader.feed(data)
        with pytest.raises(httpx.RemoteProtocolError) as info:
            reader.next_head()
        assert "sk-live" not in str(info.value)
