"""The server's request reader (`proxy/_parse.py`) against h11, the parser it replaced on the server.

Every request here, generated or hand-written, is fed to both split at every byte boundary (and then EOF):
they must agree on accept or reject and on the parsed method, target, version, headers and body, except
where ours is stricter on purpose (the smuggling rules in `_parse`'s docstring): then ours must reject,
whatever h11 says.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apikeyrouter.proxy._parse import _FIELDS, BODY, DONE, HEAD, FramingError, HeadError, RequestParser, _fields

BIG = 1 << 20
Outcome = tuple[Any, ...]


def ours(pieces: list[bytes], max_head: int = BIG) -> Outcome:
    parser = RequestParser(max_head)
    head = None
    body = b""
    try:
        for piece in [*pieces, b""]:
            parser.feed(piece)
            if parser.state is HEAD:
                head = parser.head()
                if head is None:
                    continue
            if parser.state is BODY:
                body += parser.read()
            if parser.state is DONE:
                assert head is not None
                return ("ok", head.method, head.target, head.version, tuple(head.headers), body)
    except (HeadError, FramingError):
        return ("reject",)
    return ("closed",)


def theirs(pieces: list[bytes]) -> Outcome:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=BIG)
    request = None
    body = b""
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if type(event) is h11.Request:
                    request = event
                elif type(event) is h11.Data:
                    body += bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    assert request is not None
                    headers = [(bytes(n), bytes(v)) for n, v in request.headers]
                    return ("ok", request.method, request.target, request.http_version, tuple(headers), body)
                elif type(event) is h11.ConnectionClosed:
                    return ("closed",)
    except h11.RemoteProtocolError:
        return ("reject",)
    raise AssertionError("h11 neither finished nor refused")


def every_split(raw: bytes, parse: Any) -> set[Outcome]:
    return {parse([p for p in (raw[:i], raw[i:]) if p]) for i in range(len(raw) + 1)}  # b"" would be EOF


def check(raw: bytes, stricter: bool = False) -> Outcome:
    """Both parsers at every split; returns our outcome. `stricter`: ours must refuse, h11 may take it."""
    mine = every_split(raw, ours)
    assert len(mine) == 1, f"our outcome depends on where the bytes were split: {raw!r} -> {mine}"
    outcome = mine.pop()
    if stricter:
        assert outcome == ("reject",), raw
        return outcome
    reference = every_split(raw, theirs)
    assert len(reference) == 1, raw
    assert outcome == reference.pop(), raw
    return outcome


# -- hand-written -------------------------------------------------------------------------------------

AGREED = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/models?x=1 HTTP/1.0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 007\r\n\r\nabcdefg",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n5;ext=1\r\nhello\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-trailer: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:    a   \r\nX-Empty:\r\nX-Inner: a \t b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: __utm=\x01\x7f\x80\xff\r\n\r\n",  # control bytes h11 allows
    # refused by both
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / http/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # an empty line before the request line
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 123456789012345678901\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # EOF inside a chunk
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nhello",  # EOF inside the body
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a",  # EOF inside the head
    b"",  # no request at all
]

STRICTER = [
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF line ends
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",  # duplicate C-L
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    # C-L and T-E together: the classic CL.TE / TE.CL smuggling pair
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",  # versions other than 1.0 and 1.1
    b"GET / HTTP/0.9\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: 1\n\r\n",
]


@pytest.mark.parametrize("raw", AGREED)
def test_a_hand_written_request_is_read_as_h11_reads_it_at_every_split(raw: bytes) -> None:
    check(raw)


@pytest.mark.parametrize("raw", STRICTER)
def test_what_a_front_proxy_could_read_differently_is_refused_at_every_split(raw: bytes) -> None:
    check(raw, stricter=True)


def test_a_pipelined_request_is_left_whole_for_the_next_read() -> None:
    parser = RequestParser(BIG)
    parser.feed(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    first = parser.head()
    assert first is not None and first.target == b"/a"
    assert parser.read() == b"hi" and parser.state is DONE
    parser.next_request()
    second = parser.head()
    assert second is not None and second.target == b"/b" and parser.state is DONE


def test_a_head_over_the_limit_is_a_431_whole_or_in_pieces() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 200 + b"\r\n\r\n"
    for pieces in ([raw], [raw[:150]]):
        parser = RequestParser(128)
        with pytest.raises(HeadError) as refused:
            for piece in pieces:
                parser.feed(piece)
                parser.head()
        assert refused.value.status == 431


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_a_refused_head_says_which_status_to_answer(raw: bytes, status: int) -> None:
    parser = RequestParser(BIG)
    parser.feed(raw)
    with pytest.raises(HeadError) as refused:
        parser.head()
    assert refused.value.status == status


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1?key=sk-live-0123456789 \x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-live-0123456789\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nsk-live-0123456789\r\n\r\n",
    ],
)
def test_a_refusal_names_what_is_wrong_but_never_quotes_the_bytes(raw: bytes) -> None:
    parser = RequestParser(BIG)
    parser.feed(raw)
    with pytest.raises(HeadError) as refused:
        parser.head()
    assert refused.value.status == 400 and "sk-live" not in str(refused.value)


def test_a_client_that_expects_100_continue_is_waiting_until_its_body_comes() -> None:
    parser = RequestParser(BIG)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.head() is not None and parser.continue_wanted
    parser.feed(b"h")
    assert parser.read() == b"h" and not parser.continue_wanted


def test_a_bare_lf_head_is_refused_as_soon_as_it_shows_not_at_the_deadline() -> None:
    parser = RequestParser(BIG)
    parser.feed(b"GET / HTTP/1.1\nHost: a\n")
    with pytest.raises(HeadError):
        parser.head()


# -- generated ----------------------------------------------------------------------------------------

_VALUE_BYTES = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_NAME = st.sampled_from([b"X-A", b"content-type", b"Authorization", b"Expect", b"Connection", b"Cookie", b"x~!#"])
_ODD_NAME = st.text(alphabet='abcXYZ-_!~ :@"(', min_size=0, max_size=5).map(str.encode)


def _rarely(draw: st.DrawFn, odd: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]) -> Any:
    """Mostly `usual`, one time in eight `odd`: most generated requests are valid, each fault alone."""
    return draw(odd) if draw(st.integers(0, 7)) == 0 else draw(usual)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(raw request, stricter): stricter when it carries something only our reader refuses."""
    method = _rarely(draw, st.sampled_from([b"X-Y!", b"G T", b"", b"G\x00T"]), st.sampled_from([b"GET", b"POST"]))
    target = b"/" + _rarely(draw, st.binary(max_size=8), st.text("abc/?=&%-_.~", max_size=12).map(str.encode))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(_rarely(draw, st.sampled_from([0, 2]), st.just(1))):
        headers.append((b"Host", draw(st.sampled_from([b"a", b"example.com:8080", b""]))))
    for _ in range(draw(st.integers(0, 4))):
        name = _rarely(draw, _ODD_NAME, _NAME)
        pad = draw(st.sampled_from([b"", b" ", b"\t ", b"  "]))
        value = _rarely(draw, _VALUE_BYTES, st.text("abc 12;=,-", max_size=12).map(str.encode))
        headers.append((name, pad + value + pad))
    body = draw(st.binary(max_size=20))
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked", "both", "two", "odd", "te"]))
    stricter = False
    tail = b""
    if framing in ("length", "both", "two"):
        headers.append((b"Content-Length", str(len(body)).encode()))
        tail = body
    if framing == "two":
        headers.append((b"content-length", draw(st.sampled_from([str(len(body)).encode(), b"99"]))))
        stricter = True
    if framing == "odd":
        headers.append((b"Content-Length", draw(st.sampled_from([b"1,1", b"x", b"", b"1 1", b"0x1", b"\xd9\xa1"]))))
        tail = body[:1]
    if framing == "te":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"gzip", b"chunked, gzip", b"identity", b""]))))
    if framing in ("chunked", "both"):
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        tail = _chunked(draw, body)
        stricter = stricter or framing == "both"
    if b"," in b"".join(v for n, v in headers if n.lower() == b"content-length"):
        stricter = True  # a list of lengths: h11 takes `1,1`
    if any(name[:1] in (b" ", b"\t") for name, _ in headers):
        stricter = True  # a line starting with a space is obs-fold to h11 (and joined to the one before)
    draw(st.randoms()).shuffle(headers)
    head = method + b" " + target + b" HTTP/" + version + b"\r\n"
    head += b"".join(name + b":" + value + b"\r\n" for name, value in headers)
    raw = head + b"\r\n" + tail
    if headers and draw(st.integers(0, 9)) == 0:  # an obs-fold after the first header line
        at = raw.index(b"\r\n", raw.index(b"\r\n") + 2) + 2
        raw = raw[:at] + draw(st.sampled_from([b" x\r\n", b"\t\r\n"])) + raw[at:]
        stricter = True
    if draw(st.integers(0, 9)) == 0:  # a bare LF somewhere in the head
        at = draw(st.integers(0, len(head)))
        raw = raw[:at] + b"\n" + raw[at:]
        stricter = True
    return raw, stricter


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = b""
    while body:
        size = draw(st.integers(1, len(body)))
        ext = draw(st.sampled_from([b"", b";a=1", b'; q="x y"', b"  "]))
        out += b"%x%s\r\n%s\r\n" % (size, ext, body[:size])
        body = body[size:]
    trailers = draw(st.sampled_from([b"", b"", b"X-T: 1\r\n", b"bad trailer\r\n"]))
    return out + b"0\r\n" + trailers + b"\r\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_a_generated_request_is_read_as_h11_reads_it_at_every_split(case: tuple[bytes, bool]) -> None:
    raw, stricter = case
    check(raw, stricter)


_FIELD_BYTES = [b"a", b"B", b"-", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x0b", b"\x0c", b"\x80", b"("]


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FIELD_BYTES), max_size=14), st.booleans(), st.booleans())
def test_the_field_check_accepts_what_the_field_grammar_matches(parts: list[bytes], crlf: bool, host: bool) -> None:
    # `_fields` checks header lines with byte counts and a name cache; `_FIELDS` is the grammar it stands for.
    line = b"GET / HTTP/1.1\r\n"
    head = line + (b"Host: x\r\n" if host else b"") + b"".join(parts) + (b"\r\n" if crlf else b"")
    assert (_fields(head, len(line)) is not None) == (_FIELDS.fullmatch(head, len(line)) is not None)
