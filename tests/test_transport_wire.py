"""The transport's own response reader on the wire (real servers on 127.0.0.1): malformed answers are
httpx's typed errors and their connections are dropped, bodies framed every way arrive whole however the
server splits them, and the caller's deadline bounds a read when it comes before the read timeout."""

from __future__ import annotations

import h11
import httpx
import pytest
import trio
import trio.testing

from apikeyrouter.adapters._wire import MAX_RESPONSE_HEAD
from apikeyrouter.adapters.transport import H11Transport
from tests.h11_upstream import Exchange, upstream

STEPS = httpx.Timeout(5.0)
PATHS = ["direct", "httpx"]


async def fetch(pool: H11Transport, path: str, method: str, url: str, headers: dict[str, str] | None = None) -> bytes:
    if path == "direct":
        response = await pool.request(method, url, headers or {}, None, STEPS)
        try:
            return await response.read(1 << 22)
        finally:
            await response.aclose()
    client = httpx.AsyncClient(transport=pool, timeout=STEPS)  # not closed: that would close the pool
    reply = await client.request(method, url, headers=headers)
    return reply.content


def raw_answer(first: bytes) -> object:
    """Connection 1 answers `first` (raw bytes); later connections answer normally."""

    async def handler(ex: Exchange) -> None:
        if ex.conn_id == 1:
            await ex.send_raw(first)
            await trio.sleep(0.01)
            ex.abort()
        else:
            await ex.respond(b"fine")

    return handler


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * MAX_RESPONSE_HEAD + b"\r\n\r\n",
        b"SMTP ready\r\n\r\n",
    ],
    ids=["bad-length", "gzip-framing", "obs-fold", "bad-chunk-end", "head-too-large", "not-http"],
)
async def test_a_malformed_response_is_a_protocol_error_and_its_connection_is_dropped(path: str, answer: bytes) -> None:
    pool = H11Transport()
    async with upstream(raw_answer(answer)) as up:  # type: ignore[arg-type]
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(pool, path, "GET", up.url + "/1")
        assert await fetch(pool, path, "GET", up.url + "/2") == b"fine"
    assert up.conn_ids() == [1, 2]
    await pool.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_a_response_dripped_a_few_bytes_at_a_time_is_read_whole_and_keeps_its_connection(path: str) -> None:
    async def drip(ex: Exchange) -> None:
        if ex.target == "/drip":
            await ex.send_dripped(
                h11.InformationalResponse(status_code=100, headers=[]),
                h11.Response(status_code=200, headers=[("transfer-encoding", "chunked"), ("x-a", "1")]),
                h11.Data(data=b"hello"),
                h11.Data(data=b" world"),
                h11.EndOfMessage(headers=[("x-trailer", "t")]),
            )
        else:
            await ex.respond(b"next")

    pool = H11Transport()
    async with upstream(drip) as up:
        assert await fetch(pool, path, "GET", up.url + "/drip") == b"hello world"
        assert await fetch(pool, path, "GET", up.url + "/next") == b"next"
    assert up.conn_ids() == [1, 1]
    await pool.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_a_head_answer_has_no_body_and_a_body_read_to_close_ends_its_connection(path: str) -> None:
    async def handler(ex: Exchange) -> None:
        if ex.method == "HEAD":
            await ex.send(h11.Response(status_code=200, headers=[("content-length", "1000")]), h11.EndOfMessage())
        elif ex.target == "/eof":
            await ex.send_raw(b"HTTP/1.1 200 OK\r\n\r\nuntil the ")
            await trio.sleep(0.001)
            await ex.send_raw(b"end")
            ex.abort()
        else:
            await ex.respond(b"after")

    pool = H11Transport()
    async with upstream(handler) as up:
        assert await fetch(pool, path, "HEAD", up.url + "/") == b""
        assert await fetch(pool, path, "GET", up.url + "/eof") == b"until the end"
        assert await fetch(pool, path, "GET", up.url + "/next") == b"after"
    assert up.conn_ids() == [1, 1, 2]
    await pool.aclose()


async def test_each_key_sends_its_own_authorization_though_heads_are_kept() -> None:
    pool = H11Transport()
    async with upstream() as up:
        for token in ("one", "two", "one"):
            await fetch(pool, "direct", "POST", up.url + "/", {"authorization": f"Bearer {token}"})
    assert [dict(r.headers)[b"authorization"] for r in up.requests] == [b"Bearer one", b"Bearer two", b"Bearer one"]
    await pool.aclose()


def _holds(obj: object, needle: bytes, seen: set[int] | None = None) -> bool:
    """Whether `needle` is in any bytes or str reachable from `obj` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, bytes | bytearray):
        return needle in obj
    if isinstance(obj, str):
        return needle.decode() in obj
    if isinstance(obj, dict):
        return any(_holds(k, needle, seen) or _holds(v, needle, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return any(_holds(v, needle, seen) for v in obj)
    fields = getattr(obj, "__dict__", None)
    if fields is None and hasattr(obj, "__slots__"):
        fields = {n: getattr(obj, n) for n in obj.__slots__ if hasattr(obj, n)}  # type: ignore[attr-defined]
    return fields is not None and type(obj).__module__.startswith("apikeyrouter") and _holds(fields, needle, seen)


async def test_a_key_sent_as_the_secret_is_not_kept_by_the_transport_after_its_request() -> None:
    pool = H11Transport()
    async with upstream() as up:
        for token in ("sk-live-one", "sk-live-two"):
            response = await pool.request(
                "POST", up.url + "/", {"authorization": f"Bearer {token}", "accept": "x"}, b"{}", STEPS, secret=token
            )
            await response.read(1 << 22)
            await response.aclose()
        unmarked = await pool.request("POST", up.url + "/", {"authorization": "Bearer sk-live-kept"}, b"{}", STEPS)
        await unmarked.read(1 << 22)
        await unmarked.aclose()
    assert [dict(r.headers)[b"authorization"] for r in up.requests] == [
        b"Bearer sk-live-one", b"Bearer sk-live-two", b"Bearer sk-live-kept"
    ]
    assert all(dict(r.headers)[b"accept"] == b"x" for r in up.requests[:2])
    assert not _holds(pool, b"sk-live-one") and not _holds(pool, b"sk-live-two")
    assert _holds(pool, b"sk-live-kept")  # the scan can see a kept head: without `secret` it is cached
    await pool.aclose()


@pytest.mark.parametrize(
    ("outer_s", "raised", "after"), [(3.0, trio.TooSlowError, 3.0), (30.0, httpx.ReadTimeout, 10.0)]
)
async def test_the_callers_deadline_ends_a_read_when_it_comes_before_the_read_timeout(
    outer_s: float, raised: type[Exception], after: float, mock_clock: trio.testing.MockClock
) -> None:
    async def stall(ex: Exchange) -> None:
        await trio.sleep_forever()

    pool = H11Transport()
    async with upstream(stall) as up:
        failed: list[tuple[float, BaseException]] = []

        async def call() -> None:
            start = trio.current_time()
            try:
                with trio.fail_after(outer_s):
                    await pool.request("GET", up.url, {}, None, httpx.Timeout(5.0, read=10.0))
            except (trio.TooSlowError, httpx.ReadTimeout) as exc:
                failed.append((trio.current_time() - start, exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await up.wait_for(lambda: len(up.requests) == 1)
            mock_clock.autojump_threshold = 0
    ((took, exc),) = failed
    assert type(exc) is raised and took == pytest.approx(after, abs=0.01)
    (stats,) = pool.stats().values()
    assert (stats.idle, stats.in_flight) == (0, 0)
    await pool.aclose()
