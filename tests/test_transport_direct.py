"""The adapters' direct path (`PooledClient` -> `H11Transport.request`) against real HTTP/1.1 servers on
127.0.0.1, side by side with the httpx path (a plain `httpx.AsyncClient` on the same transport): the same
request on the wire, the same quota signal, the same typed error for every failure, connections reused
or dropped by the same rules."""

from __future__ import annotations

import json
from collections.abc import Callable

import h11
import httpx
import pytest
import trio
import trio.testing

from apikeyrouter.adapters import OpenAIAdapter, parse_anthropic_headers, parse_openai_headers
from apikeyrouter.adapters.headers import LowerHeaders
from apikeyrouter.adapters.transport import H11Transport, PooledClient
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import MalformedResponse, StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret
from tests.adapter_mocks import mock_client
from tests.h11_upstream import Exchange, upstream

KEY = Secret("sk-direct-0123456789abcdef")
INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),), max_tokens=8)
ANSWER = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
PATHS = ["direct", "httpx"]


def client_for(adapter: OpenAIAdapter, path: str) -> httpx.AsyncClient:
    if path == "direct":
        client = adapter.make_client()
        assert isinstance(client, PooledClient)
        return client
    transport = H11Transport(limits=adapter.limits)
    return httpx.AsyncClient(transport=transport, timeout=adapter.timeout, trust_env=False)


async def answer(ex: Exchange) -> None:
    await ex.respond(json.dumps(ANSWER).encode(), headers=[("content-type", "application/json")])


async def complete_on(path: str, url: str, **kwargs: object) -> UpstreamError | str:
    """The completion's content, or the typed error it raised."""
    adapter = OpenAIAdapter(base_url=url + "/v1", **kwargs)  # type: ignore[arg-type]
    async with client_for(adapter, path) as http:
        try:
            return (await adapter.complete(http, INTENT, KEY)).response.content
        except UpstreamError as exc:
            return exc


# -- which path -----------------------------------------------------------------------------------------


async def test_make_client_is_pooled_on_our_transport_and_plain_on_any_other() -> None:
    class Mocked(OpenAIAdapter):
        def make_transport(self) -> httpx.AsyncBaseTransport:
            return httpx.MockTransport(lambda request: httpx.Response(200, json=ANSWER))

    async with OpenAIAdapter().make_client() as ours, Mocked().make_client() as theirs:
        assert isinstance(ours, PooledClient) and isinstance(ours.pool, H11Transport)
        assert not isinstance(theirs, PooledClient)
        assert ours.timeout == theirs.timeout and ours.trust_env is False
    async with mock_client(lambda request: httpx.Response(200, json=ANSWER)) as mocked:
        assert (await Mocked().complete(mocked, INTENT, KEY)).response.content == "yo"


# -- the same request, the same answer --------------------------------------------------------------------


async def test_both_paths_send_the_same_request_and_read_the_same_answer() -> None:
    seen: dict[str, Exchange] = {}

    async def record(ex: Exchange) -> None:
        seen[ex.target] = ex
        await answer(ex)

    async with upstream(record) as up:
        for path in PATHS:
            adapter = OpenAIAdapter(base_url=f"{up.url}/{path}", headers={"OpenAI-Organization": "org-1"})
            async with client_for(adapter, path) as http:
                for _ in range(3):
                    result = await adapter.complete(http, INTENT, KEY)
                    assert result.response.content == "yo"
                    assert result.response.usage.output_tokens == 1
    direct, via_httpx = seen["/direct/chat/completions"], seen["/httpx/chat/completions"]
    assert direct.method == via_httpx.method == "POST"
    assert direct.body == via_httpx.body and json.loads(direct.body)["model"] == "gpt-4o-mini"
    wanted = {b"host", b"authorization", b"accept", b"content-type", b"content-length", b"openai-organization"}
    assert {k: v for k, v in direct.headers if k in wanted} == {k: v for k, v in via_httpx.headers if k in wanted}
    assert dict(direct.headers)[b"authorization"] == b"Bearer " + KEY.reveal().encode()
    assert dict(direct.headers)[b"content-type"] == b"application/json"
    # The direct path decodes no content coding, so it asks for none (without the header any is acceptable).
    assert dict(direct.headers)[b"accept-encoding"] == b"identity"
    assert up.accepted == 2  # one connection per path: every later call reused it


async def test_quota_headers_give_the_same_signal_on_both_paths() -> None:
    async def limited(ex: Exchange) -> None:
        await ex.respond(
            b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}',
            status=429,
            headers=[
                ("X-RateLimit-Limit-Requests", "500"),
                ("x-ratelimit-remaining-requests", "0"),
                ("X-Ratelimit-Reset-Requests", "6m0s"),
                ("x-ratelimit-remaining-tokens", "12"),
                ("Retry-After", "7"),
                ("x-extra", "a"),
                ("x-extra", "b"),
            ],
        )

    async with upstream(limited) as up:
        errors = [await complete_on(path, up.url) for path in PATHS]
    assert all(isinstance(e, UpstreamError) for e in errors)
    direct, via_httpx = errors
    assert isinstance(direct, UpstreamError) and isinstance(via_httpx, UpstreamError)
    assert direct.failure is via_httpx.failure is FailureClass.RATE_LIMITED
    assert direct.signal == via_httpx.signal
    assert direct.signal is not None and direct.signal.remaining_requests == 0
    assert direct.signal.reset_requests_s == 360.0 and direct.retry_after == 7.0
    assert str(direct) == str(via_httpx)


def test_a_lowercase_header_dict_reads_like_httpx_headers() -> None:
    raw = [
        (b"Date", b"Wed, 02 Dec 2026 01:00:00 GMT"),
        (b"Anthropic-RateLimit-Tokens-Remaining", b"10"),
        (b"anthropic-ratelimit-tokens-limit", b"100"),
        (b"anthropic-ratelimit-tokens-reset", b"2026-12-02T01:00:30Z"),
        (b"X-RateLimit-Remaining-Requests", b"4"),
        (b"retry-after-ms", b"1500"),
        (b"Vary", b"a"),
        (b"vary", b"b"),
    ]
    view, headers = LowerHeaders.from_raw(raw), httpx.Headers(raw)
    assert view["vary"] == headers["vary"] == "a, b"
    assert parse_openai_headers(view) == parse_openai_headers(headers)
    assert parse_anthropic_headers(view) == parse_anthropic_headers(headers)
    assert parse_anthropic_headers(view).reset_tokens_s == 30.0


# -- the same failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_connection_refused_is_a_connection_failure(path: str) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        error = await complete_on(path, f"http://127.0.0.1:{port}")
    assert isinstance(error, UpstreamError) and error.failure is FailureClass.CONNECTION
    assert "ConnectError" in str(error)


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_cut_short_is_a_connection_failure_and_the_connection_is_dropped(path: str) -> None:
    async def cut(ex: Exchange) -> None:
        if ex.conn_id == 1:
            await ex.send(h11.Response(status_code=200, headers=[("content-length", "500")]), h11.Data(data=b'{"id"'))
            ex.abort()
        else:
            await answer(ex)

    async with upstream(cut) as up:
        adapter = OpenAIAdapter(base_url=up.url + "/v1")
        async with client_for(adapter, path) as http:
            with pytest.raises(UpstreamError) as info:
                await adapter.complete(http, INTENT, KEY)
            assert (await adapter.complete(http, INTENT, KEY)).response.content == "yo"
    assert info.value.failure is FailureClass.CONNECTION and "RemoteProtocolError" in str(info.value)
    assert up.conn_ids() == [1, 2]


@pytest.mark.parametrize("path", PATHS)
async def test_the_read_timeout_is_a_timeout_at_its_deadline(path: str, mock_clock: trio.testing.MockClock) -> None:
    async def stall(ex: Exchange) -> None:
        await trio.sleep_forever()

    async with upstream(stall) as up:
        raised: list[tuple[float, UpstreamError | str]] = []

        async def call() -> None:
            error = await complete_on(path, up.url, timeout=httpx.Timeout(5.0, read=10.0))
            raised.append((trio.current_time(), error))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await up.wait_for(lambda: len(up.requests) == 1)
            mock_clock.jump(9.9)
            await trio.testing.wait_all_tasks_blocked()
            assert raised == []
            mock_clock.jump(0.1)
    ((at, error),) = raised
    assert at == start + 10.0
    assert isinstance(error, UpstreamError) and error.failure is FailureClass.TIMEOUT
    assert "ReadTimeout" in str(error)


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_beyond_the_limit_is_malformed(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("apikeyrouter.adapters._http.MAX_BODY_BYTES", 1000)

    async def huge(ex: Exchange) -> None:
        await ex.respond(b"[" + b"1," * 2000 + b"1]", headers=[("content-type", "application/json")])

    async with upstream(huge) as up:
        error = await complete_on(path, up.url)
    assert isinstance(error, MalformedResponse) and "larger than 1000 bytes" in str(error)
    assert error.failure is FailureClass.SERVER_ERROR


@pytest.mark.parametrize("path", PATHS)
async def test_a_header_value_that_cannot_be_sent_fails_the_same(path: str) -> None:
    # (A key cannot hold such text: `Secret` refuses it. An adapter's configured headers can. h11, under
    # httpx, quotes the value in its message; the direct path never does.)
    async with upstream(answer) as up:
        broken = await complete_on(path, up.url, headers={"x-org": "org\r\nx-injected: 1"})
        non_ascii = await complete_on(path, up.url, headers={"x-org": "организация"})
    assert up.requests == []  # nothing was sent
    assert isinstance(broken, UpstreamError) and broken.failure is FailureClass.CONNECTION
    assert "LocalProtocolError" in str(broken)
    assert path == "httpx" or "injected" not in str(broken)
    assert isinstance(non_ascii, UpstreamError) and non_ascii.failure is FailureClass.ADAPTER_ERROR
    assert "организация" not in str(non_ascii)


# -- the pool rules, on the direct interface -------------------------------------------------------------

STEPS = httpx.Timeout(5.0)


async def get(pool: H11Transport, url: str) -> bytes:
    response = await pool.request("GET", url, {}, None, STEPS)
    try:
        return await response.read(1 << 20)
    finally:
        await response.aclose()


async def test_direct_requests_reuse_one_connection_and_a_stale_one_is_replaced_before_sending() -> None:
    async def handler(ex: Exchange) -> None:
        await ex.respond(f"{ex.conn_id} {ex.target}".encode())
        if ex.target == "/3":
            ex.abort()  # no `Connection: close`: the client learns it only from the socket

    pool = H11Transport()
    async with upstream(handler) as up:
        assert [await get(pool, f"{up.url}/{i}") for i in (1, 2, 3)] == [b"1 /1", b"1 /2", b"1 /3"]
        await up.wait_for(lambda: up.requests[-1].aborted)
        assert await get(pool, f"{up.url}/4") == b"2 /4"
        (stats,) = pool.stats().values()
        assert (stats.opened, stats.discarded, stats.in_flight) == (2, 1, 0)
    await pool.aclose()


async def test_a_direct_request_whose_bytes_were_sent_is_not_retried() -> None:
    async def handler(ex: Exchange) -> None:
        if ex.target == "/1":
            await ex.respond(b"first")
        else:
            ex.abort()

    pool = H11Transport()
    async with upstream(handler) as up:
        await get(pool, up.url + "/1")
        with pytest.raises(httpx.RemoteProtocolError):
            await get(pool, up.url + "/2")
    assert [(r.conn_id, r.target) for r in up.requests] == [(1, "/1"), (1, "/2")]
    await pool.aclose()


async def test_a_direct_read_beyond_its_limit_closes_the_connection() -> None:
    async def handler(ex: Exchange) -> None:
        await ex.respond(b"x" * 2_000_000 if ex.target == "/big" else b"small")

    pool = H11Transport()
    async with upstream(handler) as up:
        response = await pool.request("GET", up.url + "/big", {}, None, STEPS)
        assert await response.read(100) == b"x" * 100
        await response.aclose()
        assert await get(pool, up.url + "/next") == b"small"
    assert up.conn_ids() == [1, 2]
    await pool.aclose()


async def test_a_cancelled_direct_request_closes_its_connection_and_frees_its_slot() -> None:
    async def hang_first(ex: Exchange) -> None:
        if ex.target == "/hang":
            await ex.until_client_hangs_up()
        await ex.respond(b"after")

    pool = H11Transport(limits=httpx.Limits(max_connections=1))
    async with upstream(hang_first) as up:
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, pool, up.url + "/hang")
                await up.wait_for(lambda: len(up.requests) == 1)
                scope.cancel()
        await up.wait_for(lambda: up.client_closed == [1])
        (stats,) = pool.stats().values()
        assert (stats.idle, stats.in_flight) == (0, 0)
        assert await get(pool, up.url + "/next") == b"after"
    await pool.aclose()


async def test_waiting_past_the_pool_timeout_is_a_pool_timeout(mock_clock: trio.testing.MockClock) -> None:
    async def never(ex: Exchange) -> None:
        await trio.sleep_forever()

    pool = H11Transport(limits=httpx.Limits(max_connections=1))
    async with upstream(never) as up, trio.open_nursery() as nursery:
        nursery.start_soon(get, pool, up.url)
        await up.wait_for(lambda: len(up.requests) == 1)
        start = trio.current_time()
        mock_clock.autojump_threshold = 0  # the only slot is taken: nothing else happens until +2 s
        with pytest.raises(httpx.PoolTimeout):
            await pool.request("GET", up.url, {}, None, httpx.Timeout(60.0, pool=2.0))
        assert trio.current_time() == start + 2.0
        nursery.cancel_scope.cancel()
    await pool.aclose()


# -- streams ----------------------------------------------------------------------------------------------


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CHUNK = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}  # fmt: skip
LAST = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip


def streamer(cut: Callable[[Exchange], bool]) -> Callable[[Exchange], object]:
    async def handler(ex: Exchange) -> None:
        head = [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-remaining-requests", "9"),
        ]
        await ex.send(h11.Response(status_code=200, headers=head), h11.Data(data=sse(CHUNK)))
        if cut(ex):
            ex.abort()
            return
        await ex.send(h11.Data(data=sse(LAST)), h11.Data(data=b"data: [DONE]\n\n"))
        await trio.sleep(0.001)  # the chunked terminator in its own packet, after the end marker
        await ex.send(h11.EndOfMessage())

    return handler


@pytest.mark.parametrize("path", PATHS)
async def test_streams_read_to_done_reuse_one_connection(path: str) -> None:
    async with upstream(streamer(lambda ex: False)) as up:  # type: ignore[arg-type]
        adapter = OpenAIAdapter(base_url=up.url + "/v1")
        async with client_for(adapter, path) as http:
            for _ in range(20):
                async with adapter.open_stream(http, INTENT, KEY) as stream:
                    assert stream.signal.remaining_requests == 9
                    assert [c.delta async for c in stream] == ["hello", "", ""]
                    assert stream.usage is not None and stream.usage.output_tokens == 1
    assert up.accepted == 1


@pytest.mark.parametrize("path", PATHS)
async def test_a_stream_cut_mid_way_is_interrupted_the_same(path: str) -> None:
    async with upstream(streamer(lambda ex: True)) as up:  # type: ignore[arg-type]
        adapter = OpenAIAdapter(base_url=up.url + "/v1")
        async with client_for(adapter, path) as http, adapter.open_stream(http, INTENT, KEY) as stream:
            got: list[str] = []
            with pytest.raises(StreamInterrupted) as info:
                async for chunk in stream:
                    got.append(chunk.delta)
    assert got == ["hello"]
    assert info.value.failure is FailureClass.CONNECTION and "RemoteProtocolError" in str(info.value)
