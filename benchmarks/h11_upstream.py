"""A small HTTP/1.1 upstream for the client benchmarks, run in its own process (trio + h11, keep-alive).

    python benchmarks/h11_upstream.py --mode fixed|sse

Prints `port N` once listening. `fixed`: every request gets the same `chat.completion` JSON
(content-length). `sse`: every request gets an OpenAI-shaped event stream, chunked, whose terminator is sent
after `data: [DONE]` in a separate write (as real servers often do). `GET /stats` answers the number of
connections accepted so far, so a benchmark can count new upstream connections.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import h11
import trio
import trio.lowlevel

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15},
    }
).encode()


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


_DELTA = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
SSE_EVENTS = [
    _event({**_DELTA, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}),
    _event({**_DELTA, "choices": [{"index": 0, "delta": {"content": "lo."}, "finish_reason": None}]}),
    _event(
        {
            **_DELTA,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15},
        }
    ),
    b"data: [DONE]\n\n",
]


class Counter:
    accepted = 0


async def _serve(mode: str, counter: type[Counter], stream: trio.SocketStream) -> None:
    counter.accepted += 1
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                target = event.target
                continue
            if isinstance(event, h11.Data):
                continue
            if not isinstance(event, h11.EndOfMessage):
                return
            if target == b"/stats":
                body = str(counter.accepted).encode()
                head = [("content-type", "text/plain"), ("content-length", str(len(body)))]
                out = conn.send(h11.Response(status_code=200, headers=head))
                await stream.send_all(out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            elif mode == "fixed":
                head = [("content-type", "application/json"), ("content-length", str(len(BODY)))]
                out = conn.send(h11.Response(status_code=200, headers=head))
                await stream.send_all(out + conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
            else:
                head = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
                out = conn.send(h11.Response(status_code=200, headers=head))
                await stream.send_all(out + b"".join(conn.send(h11.Data(data=e)) for e in SSE_EVENTS))
                await trio.lowlevel.checkpoint()
                await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main(mode: str) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(_serve, mode, Counter), 0, host="127.0.0.1"))
        print(f"port {listeners[0].socket.getsockname()[1]}", flush=True)


def start_upstream(mode: str) -> tuple[subprocess.Popen[str], int]:
    """This server in a child process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--mode", mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("fixed", "sse"), default="fixed")
    try:
        trio.run(main, parser.parse_args().mode)
    except KeyboardInterrupt:
        sys.exit(0)
