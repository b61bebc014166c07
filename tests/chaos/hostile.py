"""A hostile upstream: a real HTTP/1.1 server on 127.0.0.1 (trio sockets, h11 to read requests) that answers
each request as its script says, byte for byte: any status line, headers and body, and every way a body can
go wrong (cut short, stalled, reset mid-way, chunked and never finished).

    server = HostileServer(lambda seen: json_answer(200, completion()))
    url = await nursery.start(server.serve)          # "http://127.0.0.1:PORT"
    server.script = lambda seen: reset_after(head(200, length=500) + b"{")

Answers are written raw (never through h11), so they can break HTTP itself. A connection is kept alive only
when its answer says so (`Answer.keep_alive`, true for well-formed answers) and the client asked for it.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, assert_never

import attrs
import h11
import trio

__all__ = [
    "Answer",
    "Close",
    "HostileServer",
    "Reset",
    "Seen",
    "Send",
    "Stall",
    "chunked",
    "completion",
    "head",
    "json_answer",
    "raw_answer",
    "reset_after",
    "sse",
    "sse_event",
    "stall_after",
]


@attrs.frozen
class Seen:
    """A request as it arrived."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def secret(self) -> str:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth else self.headers.get("x-api-key", "")

    @property
    def streaming(self) -> bool:
        try:
            return json.loads(self.body).get("stream") is True
        except (ValueError, AttributeError):
            return False


@attrs.frozen
class Send:
    data: bytes


@attrs.frozen
class Stall:
    seconds: float


@attrs.frozen
class Reset:
    """Abort the connection: the peer sees ECONNRESET, not an orderly end."""


@attrs.frozen
class Close:
    """An orderly close (FIN) wherever the answer is."""


Step = Send | Stall | Reset | Close


@attrs.frozen
class Answer:
    steps: tuple[Step, ...]
    keep_alive: bool = False


Script = Callable[[Seen], Answer]


def head(status: int, headers: Iterable[tuple[str, str]] = (), *, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Hostile"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def raw_answer(
    status: int, body: bytes, headers: Iterable[tuple[str, str]] = (), *, content_type: str = "application/json"
) -> Answer:
    """A well-formed answer (content-length framing) with any status, headers and body bytes."""
    data = head(status, [("content-type", content_type), *headers], length=len(body)) + body
    return Answer((Send(data),), keep_alive=True)


def json_answer(status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    return raw_answer(status, json.dumps(obj).encode(), headers)


def chunked(parts: Iterable[bytes], *, finish: bool = True, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    """A chunked body; `finish=False` closes the connection without the zero-length last chunk."""
    data = head(200, [("content-type", "application/json"), ("transfer-encoding", "chunked"), *headers])
    for part in parts:
        data += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    if finish:
        return Answer((Send(data + b"0\r\n\r\n"),), keep_alive=True)
    return Answer((Send(data), Close()))


def sse_event(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def sse(events: Iterable[bytes], *, done: bool = True, then: Iterable[Step] = (Close(),)) -> Answer:
    """An event stream (read to the close, as providers send it); `done` appends `data: [DONE]`."""
    body = b"".join(events) + (b"data: [DONE]\n\n" if done else b"")
    data = head(200, [("content-type", "text/event-stream"), ("connection", "close")]) + body
    return Answer((Send(data), *then))


def stall_after(data: bytes, seconds: float) -> Answer:
    """Send `data`, then nothing for `seconds` (a slowloris past any sane deadline), then close."""
    return Answer((Send(data), Stall(seconds), Close()))


def reset_after(data: bytes) -> Answer:
    return Answer((Send(data), Reset()))


def completion(content: str = "hi", usage: Any = None, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12} if usage is None else usage,
    }


def _abort(stream: trio.SocketStream) -> None:
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


class HostileServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(f"http://127.0.0.1:{port}")

    async def _connection(self, stream: trio.SocketStream) -> None:
        leftover = b""
        try:
            while True:
                conn = h11.Connection(h11.SERVER)
                if leftover:
                    conn.receive_data(leftover)  # b"" would tell h11 the peer closed
                seen = await self._read_request(stream, conn)
                if seen is None:
                    break
                self.seen.append(seen)
                answer = self.script(seen)
                if not await self._play(stream, answer):
                    return  # reset: the socket is gone
                if not (answer.keep_alive and conn.their_http_version == b"1.1" and _wants_keep_alive(seen)):
                    break
                leftover = conn.trailing_data[0]
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass  # the client left, or sent something that is not HTTP: not this server's problem

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection) -> Seen | None:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
                return Seen(request.method.decode(), request.target.decode(), headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _play(self, stream: trio.SocketStream, answer: Answer) -> bool:
        for step in answer.steps:
            match step:
                case Send(data=data):
                    await stream.send_all(data)
                case Stall(seconds=seconds):
                    await trio.sleep(seconds)
                case Reset():
                    _abort(stream)
                    return False
                case Close():
                    await stream.aclose()
                    return False
                case _:
                    assert_never(step)
        return True


def _wants_keep_alive(seen: Seen) -> bool:
    return "close" not in seen.headers.get("connection", "").lower()
