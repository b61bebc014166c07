"""The hostile upstream's repertoire, as one table both the library and the proxy suites run.

Each scenario is what the upstream does to every request of its hostile phase, and the outcomes a caller may
see: "ok", "deadline" (the caller's own deadline ran out: only for answers that never end), or the typed error
`Class:failure`. After the hostile phase the upstream turns healthy and a spare key (kept disabled until then)
comes back, and the next request must succeed: whatever the upstream did, the router is still up.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import attrs

from apikeyrouter.errors import ApiKeyRouterError, UpstreamError
from tests.chaos.hostile import (
    Answer,
    Close,
    Seen,
    Send,
    Stall,
    chunked,
    completion,
    head,
    json_answer,
    raw_answer,
    reset_after,
    sse,
    sse_event,
    stall_after,
)

MODEL = "gpt-4o-mini"
KEYS = {
    "victim-1": "sk-chaos-victim-1-Hq8Zp3",
    "victim-2": "sk-chaos-victim-2-Lm4Rt7",
    "spare": "sk-chaos-spare-Wc2Nd9",
}
MALFORMED = "MalformedResponse:server_error"
DEADLINE = 2.0  # every hostile request's deadline (the proxy's request_deadline too)
MARGIN = 0.75  # how late past its deadline an answer may come (cleanup, scheduling on a busy machine)
READ_TIMEOUT = 0.5  # the provider's read timeout: two stalled attempts fit in the deadline
FOREVER = 30.0  # a stall no test waits for


def request_body(stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16, "stream": stream}


def chunk(content: str | None = "hi", finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = (
        []
        if content is None and finish is None
        else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    )
    out: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
GOOD_EVENTS = [sse_event(chunk("hi")), sse_event(chunk(" there", "stop")), sse_event(chunk(None, usage=USAGE))]


def healthy(seen: Seen) -> Answer:
    if seen.streaming:
        return sse(GOOD_EVENTS)
    return json_answer(200, completion(), [("x-ratelimit-remaining-requests", "1000")])


def outcome_of(exc: ApiKeyRouterError) -> str:
    if isinstance(exc, UpstreamError):
        return f"{type(exc).__name__}:{exc.failure.value}"
    return type(exc).__name__


@attrs.frozen
class Scenario:
    name: str
    answer: Callable[[Seen], Answer]
    outcomes: frozenset[str]
    stream: bool = False

    @property
    def id(self) -> str:
        return ("stream: " if self.stream else "") + self.name


def _always(answer: Answer) -> Callable[[Seen], Answer]:
    return lambda seen: answer


def _ok(name: str, answer: Answer, *, stream: bool = False) -> Scenario:
    return Scenario(name, _always(answer), frozenset({"ok"}), stream)


def _fails(name: str, answer: Answer, *outcomes: str, stream: bool = False) -> Scenario:
    return Scenario(name, _always(answer), frozenset(outcomes), stream)


ABSURD_HEADERS = [
    ("x-ratelimit-limit-requests", "1e40"),
    ("x-ratelimit-remaining-requests", "-5"),
    ("x-ratelimit-reset-requests", "1000000000000s"),
    ("x-ratelimit-remaining-tokens", "nan"),
    ("x-ratelimit-reset-tokens", "99999999h"),
    ("retry-after", "1e300"),
]
BIG = 40 * 1024 * 1024  # more than any chat completion: an upstream sending this is broken or hostile
JSON = [("content-type", "application/json")]
COMPLETION = json.dumps(completion()).encode()

SLOWLORIS = Answer(
    tuple(s for c in b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 200 for s in (Send(bytes([c])), Stall(0.05)))
)

COMPLETE: list[Scenario] = [
    _ok("absurd rate-limit headers on a 200", json_answer(200, completion(), ABSURD_HEADERS)),
    _fails(
        "429 with Retry-After in the year 33715",
        json_answer(429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, [("retry-after", "1e12")]),
        "UpstreamError:rate_limited",
    ),
    _ok("negative usage", json_answer(200, completion(usage={"prompt_tokens": -9, "completion_tokens": -1}))),
    _ok("huge usage", json_answer(200, completion(usage={"prompt_tokens": 10**30, "completion_tokens": 10**30}))),
    _ok("fractional usage", json_answer(200, completion(usage={"prompt_tokens": 9.5, "completion_tokens": 0.1}))),
    _ok("usage as strings", json_answer(200, completion(usage={"prompt_tokens": "9", "completion_tokens": "x"}))),
    _ok("usage overflowing to inf", raw_answer(200, json.dumps(completion()).replace("9,", "1e999,").encode())),
    _fails("invalid JSON", raw_answer(200, b'{"choices": [{"message": '), MALFORMED),
    _fails("JSON that is not an object", raw_answer(200, b"[1, 2, 3]"), MALFORMED),
    _fails("no choices", json_answer(200, {"choices": "none", "usage": USAGE}), MALFORMED),
    _fails("HTML with status 200", raw_answer(200, b"<html>ok</html>", content_type="text/html"), MALFORMED),
    _fails("an empty 200", raw_answer(200, b""), MALFORMED),
    _fails("a 204", Answer((Send(head(204)),), keep_alive=True), MALFORMED),
    _fails("JSON nested 100000 deep", raw_answer(200, b"[" * 100_000 + b"]" * 100_000), MALFORMED),
    _fails("invalid UTF-8", raw_answer(200, b'{"choices": "\xff\xfe"}'), MALFORMED),
    _fails(
        "gzip that is not gzip",
        raw_answer(200, b"not gzip at all", [("content-encoding", "gzip")]),
        MALFORMED,
    ),
    _fails(
        "a chunked body cut before its last chunk",
        chunked([b'{"choices": [', b'{"message": {"content": "hi"}}'], finish=False),
        "UpstreamError:connection",
    ),
    _fails(
        "fewer bytes than Content-Length, then close",
        Answer((Send(head(200, JSON, length=500) + b'{"choices"'), Close())),
        "UpstreamError:connection",
    ),
    _fails(
        "more bytes than Content-Length on a kept-alive connection",
        Answer((Send(head(200, JSON, length=12) + b'{"choices": [], "usage": {}}'),), keep_alive=True),
        MALFORMED,
        "UpstreamError:connection",
    ),
    _fails(
        "headers, then a stall past the deadline",
        stall_after(head(200, JSON, length=500) + b'{"cho', FOREVER),
        "UpstreamError:timeout",
    ),
    _fails("nothing at all, for ever", stall_after(b"", FOREVER), "UpstreamError:timeout"),
    _fails(
        "a status line one byte at a time (slowloris)",
        SLOWLORIS,
        "deadline",
    ),
    _fails(
        "a reset mid-body",
        reset_after(head(200, JSON, length=500) + b'{"choices": [{"mess'),
        "UpstreamError:connection",
    ),
    _fails("a reset before any byte", reset_after(b""), "UpstreamError:connection"),
    _fails("a close before any byte", Answer((Close(),)), "UpstreamError:connection"),
    _fails("not HTTP at all", Answer((Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Close())), "UpstreamError:connection"),
    _fails("a status code of 999", json_answer(999, {"error": {"message": "what"}}), "UpstreamError:server_error"),
    _ok("a 64 KiB header", json_answer(200, completion(), [("x-junk", "j" * 65536)])),
    _fails(
        "a 500 with a 5 MiB body",
        raw_answer(500, b"e" * (5 * 1024 * 1024), content_type="text/plain"),
        "UpstreamError:server_error",
    ),
    _fails("a redirect", json_answer(302, {}, [("location", "http://169.254.169.254/")]), "UpstreamError:server_error"),
    _ok(
        "early hints before the answer",
        Answer((Send(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"), *json_answer(200, completion()).steps), True),
    ),
    _ok(
        "HTTP/1.0 with a body delimited by the close",
        Answer((Send(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + COMPLETION), Close())),
    ),
    _fails(
        "two different Content-Lengths",
        Answer((Send(head(200, [*JSON, ("content-length", "3")], length=len(COMPLETION)) + COMPLETION), Close())),
        "UpstreamError:connection",
    ),
    _fails(
        "a chunk size that is not hex",
        Answer((Send(head(200, [*JSON, ("transfer-encoding", "chunked")]) + b"zz\r\n{}\r\n0\r\n\r\n"), Close())),
        "UpstreamError:connection",
    ),
    _fails(
        "a 200 body larger than any completion",
        Answer((Send(head(200, JSON, length=BIG) + b" " * BIG),), True),
        MALFORMED,
    ),
]

SSE_HEAD = head(200, [("content-type", "text/event-stream")])

STREAM: list[Scenario] = [
    _fails("a status line one byte at a time (slowloris)", SLOWLORIS, "deadline", stream=True),
    _ok(
        "garbage lines around the events",
        sse([b"garbage\n", b": comment\n", b"\x00\x01\xff\n", b"event\n\n", *GOOD_EVENTS, b"retry: x\n"]),
        stream=True,
    ),
    _ok(
        "absurd usage in the stream",
        sse([*GOOD_EVENTS[:2], sse_event(chunk(None, usage={"prompt_tokens": -1}))]),
        stream=True,
    ),
    _fails("no [DONE]", sse(GOOD_EVENTS, done=False), "StreamInterrupted:connection", stream=True),
    _fails(
        "cut mid-event after a chunk",
        sse([GOOD_EVENTS[0], b'data: {"id": "c1", "choi'], done=False),
        "StreamInterrupted:connection",
        stream=True,
    ),
    _fails(
        "cut before the first chunk",
        sse([b'data: {"id": "c1", "cho'], done=False),
        "StreamInterrupted:connection",
        stream=True,
    ),
    _fails(
        "an undecodable event after a chunk",
        sse([GOOD_EVENTS[0], b"data: {not json\n\n"]),
        "StreamInterrupted:server_error",
        stream=True,
    ),
    _fails(
        "an error event mid-stream",
        sse([GOOD_EVENTS[0], sse_event({"error": {"message": "boom", "type": "server_error"}})]),
        "StreamInterrupted:server_error",
        stream=True,
    ),
    _fails("JSON instead of an event stream", json_answer(200, completion()), MALFORMED, stream=True),
    _fails(
        "a stall after the first chunk",
        Answer((Send(SSE_HEAD + GOOD_EVENTS[0]), Stall(FOREVER), Close())),
        "StreamInterrupted:timeout",
        stream=True,
    ),
    _fails(
        "a reset after the first chunk",
        reset_after(SSE_HEAD + GOOD_EVENTS[0]),
        "StreamInterrupted:connection",
        stream=True,
    ),
    _fails(
        "an event line that never ends",
        Answer((Send(SSE_HEAD + GOOD_EVENTS[0] + b"data: " + b"x" * BIG), Close())),
        "StreamInterrupted:server_error",
        stream=True,
    ),
    _fails(
        "a 500 before the stream",
        json_answer(500, {"error": {"message": "down"}}),
        "UpstreamError:server_error",
        stream=True,
    ),
]

SCENARIOS = COMPLETE + STREAM
IDS = [s.id for s in SCENARIOS]

# Everything at once: concurrent requests each meeting the next answer of the table (the heavy ones left out).
HEAVY = {"a 200 body larger than any completion", "an event line that never ends", "a 500 with a 5 MiB body"}


def barrage() -> Callable[[Seen], Answer]:
    light = [s for s in SCENARIOS if s.name not in HEAVY]
    turns = {
        False: itertools.cycle([s for s in light if not s.stream]),
        True: itertools.cycle([s for s in light if s.stream]),
    }
    return lambda seen: next(turns[seen.streaming]).answer(seen)


ANY_OUTCOME = frozenset({"ok", "NoKeyAvailable"}).union(*(s.outcomes for s in SCENARIOS))
