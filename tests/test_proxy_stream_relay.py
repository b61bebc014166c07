"""The proxy's stream relay, seen on the wire it writes to: what goes out, in which writes, and when.

The app runs on a recording `http11.Wire` (no socket), so trio's virtual clock can drive the idle deadline
exactly: a stream whose chunks keep coming is never cut, one that stalls is cut after `stream_idle_timeout`
and at most its slack later.
"""

from __future__ import annotations

import json

import pytest
import trio

from apikeyrouter.domain.request import RequestIntent, StreamChunk
from apikeyrouter.proxy import ProxyApp
from apikeyrouter.proxy._anthropic import AnthropicRelay
from apikeyrouter.proxy._http import json_bytes
from apikeyrouter.proxy._openai import OpenAIRelay, chunk_event
from apikeyrouter.proxy._parse import parse_head
from apikeyrouter.proxy.http11 import Request, Response
from apikeyrouter.secret import Secret
from tests.proxy_fakes import CLIENT_TOKEN, FakeRouter

ANTHROPIC_BODY = {"model": "claude-3-5-haiku", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
IDLE = 0.4
SLACK = IDLE / 8  # the app moves the idle deadline only once it is this far behind


class RecordingWire:
    """The connection side of a request: its body, and every write with its virtual time."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.writes: list[tuple[float, bytes]] = []
        self.keep_alive = True
        self.http10 = False
        self.head_only = False

    @property
    def draining(self) -> bool:
        return False

    def body_complete(self) -> bool:
        return True

    async def read_body(self, limit: int) -> bytes:
        return self.body

    async def send_all(self, data: bytes) -> None:
        self.writes.append((trio.current_time(), data))

    def events(self) -> list[dict[str, object]]:
        text = b"".join(data for _, data in self.writes).decode()
        return [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]


async def stream_through_app(router: FakeRouter) -> RecordingWire:
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)], stream_idle_timeout=IDLE, log_requests=False)
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    wire = RecordingWire(body.encode())
    head = parse_head(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer %s\r\n" % CLIENT_TOKEN.encode()
    )
    await app(Request(wire, head), Response(wire))
    return wire


async def test_a_stream_whose_chunks_keep_coming_is_never_cut_however_long_it_runs(autojump_clock: object) -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"{i} ") for i in range(40)]
    router.stream_delay = IDLE * 0.9  # always just inside the idle timeout: 40 chunks take 9x the timeout
    wire = await stream_through_app(router)
    events = wire.events()
    assert [e["choices"][0]["delta"]["content"] for e in events] == [f"{i} " for i in range(40)]  # type: ignore[index]
    assert wire.writes[-1][1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


async def test_a_stalled_stream_is_cut_after_the_idle_timeout_and_no_later_than_its_slack(
    autojump_clock: object,
) -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta=f"{i} ") for i in range(6)]
    router.stream_pauses = [0.0, 0.05, 0.05, 0.3, 0.1, 60.0]  # then nothing for a minute
    wire = await stream_through_app(router)
    last_chunk_at = wire.writes[-2][0]
    cut_at, ending = wire.writes[-1]
    assert b'"code":"stream_idle"' in ending
    assert last_chunk_at + IDLE <= cut_at <= last_chunk_at + IDLE + SLACK
    assert [e["choices"][0]["delta"]["content"] for e in wire.events()[:-1]] == [f"{i} " for i in range(5)]  # type: ignore[index]


async def test_the_head_and_the_first_event_go_out_in_one_write() -> None:
    router = FakeRouter()
    router.stream_chunks = [StreamChunk(delta="Hel"), StreamChunk(delta="lo", finish_reason="stop")]
    wire = await stream_through_app(router)
    first = wire.writes[0][1]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked\r\n" in first
    _, _, body = first.partition(b"\r\n\r\n")
    size, _, event = body.partition(b"\r\n")
    assert int(size, 16) == len(event) - 2 and event.endswith(b"\n\n\r\n")
    assert json.loads(event[6:].strip())["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}


@pytest.mark.parametrize(
    "chunks",
    [
        [StreamChunk(delta="plain"), StreamChunk(delta=" more"), StreamChunk(finish_reason="stop")],
        [StreamChunk(delta='quotes " and \\ and \n newlines and \u2028 and \x00')],
        [StreamChunk(delta="h\u00e9 \U0001f600"), StreamChunk(delta="lone \ud800 surrogate")],
        [StreamChunk(delta="a", model="gpt-4o-2024"), StreamChunk(delta="b", model='other "model"')],
        [StreamChunk(delta="", finish_reason="length"), StreamChunk(delta="x", finish_reason="content_filter")],
    ],
)
def test_openai_events_are_the_bytes_of_the_whole_chunk_object(chunks: list[StreamChunk]) -> None:
    # The relay writes each event from a prefix made once per model: it must be what serialising the
    # whole `chat.completion.chunk` object writes, for any text and any model the upstream sends.
    relay = OpenAIRelay('chatcmpl-"id"', 1_700_000_000, "gpt-4o-mini", include_usage=False)
    for chunk in chunks:
        first, model = relay.first, chunk.model or relay.model
        assert relay.event(chunk) == chunk_event(chunk, relay.completion_id, relay.created, model, first=first)


@pytest.mark.parametrize("text", ["plain", 'quotes " \\ and \n', "h\u00e9 \U0001f600 \u2028", "lone \ud800 surrogate"])
def test_anthropic_text_deltas_are_the_bytes_of_the_whole_event_object(text: str) -> None:
    relay = AnthropicRelay("msg_1", RequestIntent.from_anthropic(ANTHROPIC_BODY))
    opening = relay.event(StreamChunk(delta="first"))  # message_start, the text block, its first delta
    assert opening is not None and opening.count(b"event: content_block_delta\n") == 1
    event = relay.event(StreamChunk(delta=text))
    expected = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    assert event == b"event: content_block_delta\ndata: " + json_bytes(expected) + b"\n\n"
