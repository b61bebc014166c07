"""Upstream bytes the adapters must digest without stalling or bloating the process: redaction is linear in
the text, JSON nested past the recursion limit is a malformed answer (not a RecursionError), and bodies and
stream events have a size past which they are refused instead of buffered."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.adapters._http import MAX_BODY_BYTES, MAX_EVENT_BYTES, SSEDecoder, SSEEvent, SSETooLarge
from apikeyrouter.domain.request import ChatMessage, RequestIntent
from apikeyrouter.errors import MalformedResponse, UpstreamError
from apikeyrouter.secret import Secret, redact
from tests.adapter_mocks import mock_client

KEY = Secret("sk-chaos-redact-Hq8Zp3Lm4Rt7")
N = 12_000
# Each of these took seconds (quadratic backtracking in the masked-key patterns): a 500 whose 64 KiB body
# was one of them held the event loop, and every request of the process, for about two minutes.
TEXTS = {
    "a run of letters": "e" * N,
    "a run of stars": "*" * N,
    "a run of dots": "." * N,
    "letters then stars": "e" * N + "***",
    "stars then letters": "***" + "e" * N,
    "alternating": "ab*" * (N // 3),
}


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
@pytest.mark.parametrize("secret", [KEY, None], ids=["with the key", "without a key"])
def test_redaction_is_linear_in_the_text(text: str, secret: Secret | None) -> None:
    start = time.perf_counter()
    redact(text, secret)
    assert time.perf_counter() - start < 0.25


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("key Qz7x****c6Bd is bad", "key [redacted] is bad"),
        ("key ab***cd***ef is bad", "key [redacted][redacted] is bad"),
        ("wait... then go", "wait... then go"),
        ("**bold** and * list", "**bold** and * list"),
    ],
)
def test_masked_forms_are_still_redacted_and_prose_kept(text: str, shown: str) -> None:
    assert redact(text) == shown


INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),), max_tokens=8)


@pytest.mark.parametrize("status", [200, 500])
async def test_json_nested_past_the_recursion_limit_is_a_typed_error(status: int) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    adapter = OpenAIAdapter(base_url="http://upstream.test/v1")
    answer = httpx.Response(status, headers={"content-type": "application/json"}, content=body)
    async with mock_client(lambda r: answer) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(client, INTENT, KEY)
    assert isinstance(info.value, MalformedResponse) == (status == 200)


def test_an_event_stream_line_without_end_is_refused_at_the_limit() -> None:
    decoder = SSEDecoder()
    fed = 0
    with pytest.raises(SSETooLarge):
        while fed <= 2 * MAX_EVENT_BYTES:
            decoder.feed(b"data: " + b"x" * 65536)
            fed += 65536
    assert fed <= MAX_EVENT_BYTES + 65536  # refused as it crossed the limit, not after buffering it all


def test_an_event_of_many_data_lines_is_refused_at_the_limit() -> None:
    decoder = SSEDecoder()
    with pytest.raises(SSETooLarge):
        for _ in range(2 * MAX_EVENT_BYTES // 1024):
            decoder.feed(b"data: " + b"x" * 1024 + b"\n")


def _drip(payload: bytes) -> tuple[float, list[SSEEvent]]:
    """Feed `payload` one byte at a time: the CPU time it took and the events."""
    decoder = SSEDecoder()
    start = time.process_time()
    events = [e for i in range(len(payload)) for e in decoder.feed(payload[i : i + 1])]
    return time.process_time() - start, events


def test_bytes_dripped_one_at_a_time_are_scanned_once() -> None:
    # One 600 KB line dripped byte by byte must cost about what as many bytes of short lines cost (here it
    # costs less: fewer events). A decoder that rescans its buffer on every feed does ~180 GB of memchr here,
    # over 5x the short lines. A ratio of runs in the same process, not a time limit: load slows both alike.
    long_line = b"data: " + b"x" * 600_000 + b"\n\n"
    short_lines = (b"data: " + b"x" * 8 + b"\n\n") * (len(long_line) // 16)
    long_cpu, events = min(_drip(long_line), _drip(long_line))
    short_cpu = min(_drip(short_lines)[0], _drip(short_lines)[0])
    assert [len(e.data) for e in events] == [600_000]
    assert long_cpu < 2.5 * short_cpu, (long_cpu, short_cpu)


def test_split_lines_and_crlf_still_decode() -> None:
    decoder = SSEDecoder()
    wire = b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n"
    events = [e for i in range(len(wire)) for e in decoder.feed(wire[i : i + 1])]
    assert events == [SSEEvent("a", "1"), SSEEvent("message", "2"), SSEEvent("message", "3")]


async def test_a_body_larger_than_any_completion_is_refused_unread() -> None:
    adapter = OpenAIAdapter(base_url="http://upstream.test/v1")
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1 << 20
            yield b" " * (1 << 20)

    answer = httpx.Response(200, headers={"content-type": "application/json"}, content=endless())
    async with mock_client(lambda r: answer) as client:
        with pytest.raises(MalformedResponse, match="larger than"):
            await adapter.complete(client, INTENT, KEY)
    assert sent <= MAX_BODY_BYTES + 2 * (1 << 20)
