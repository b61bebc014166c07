"""The server side alone: our h11 server + `ProxyApp` in front of a router that answers at once, over sockets.

    python benchmarks/server_side.py [--rounds 3] [--duration 3] [--chunks 50] [--profile FILE]

`benchmarks/proxy.py` measures `serve` end to end, where the router, the adapters and the client transport
cost most of the CPU; this one takes them away, so what is left per request is the part of the hot path the
proxy package owns: accepting, h11 parsing, the app's headers, auth, JSON in and out, the answer's bytes,
deadlines, the disconnect watch, metrics. One child process (pinned to core 0) serves `ProxyApp` on
`serve_proxy` with `proxy.py`'s instant router (plus an instant `stream`: `max_tokens` chunks, each yielded
at once); wrk (pinned to the other cores, 32 connections, keep-alive) loads it. Figures, each the median of
interleaved rounds:

- `chat_cpu_us`: the server's CPU time (user + system, /proc) per non-streaming chat completion;
- `health_cpu_us`: the same for `GET /health` (the server with next to no app);
- `stream_chunk_cpu_us`: CPU per relayed chunk, from streams of `--chunks` + 2 chunks minus streams of 2
  chunks (SSE events written by the app and the server, no upstream to read);
- `stream_open_cpu_us`: CPU per 2-chunk stream (the cost of opening and ending one).

- `parse_us` / `h11_parse_us`: in this process, CPU to read one chat request (head and 90-byte body) with
  the server's reader (`proxy/_parse.py`) and with h11 as the server used it before (a parser per request,
  events to the end of the message): the case for a reader of our own, measured in the same run.

`--profile FILE` samples the server with py-spy under the chat load and writes `proxy.py`'s summary to FILE.
The last line is one JSON object. Run it in two trees with `ab.py` for a same-run baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from proxy import (
    CLIENT_TOKEN,
    Child,
    _InstantRouter,
    _py_spy,
    _quiet_logging,
    cpu_seconds,
    summarize_profile,
)


class _InstantStream:
    def __init__(self, metadata: Any, chunks: list[Any]) -> None:
        self.metadata = metadata
        self._chunks = iter(chunks)

    def __aiter__(self) -> _InstantStream:
        return self

    async def __anext__(self) -> Any:
        for chunk in self._chunks:
            await trio.lowlevel.checkpoint()  # as a real stream would: each chunk is awaited
            return chunk
        raise StopAsyncIteration


class _StreamingRouter(_InstantRouter):
    """The instant router, and a stream of `max_tokens` one-word chunks (the last with finish_reason)."""

    @contextlib.asynccontextmanager
    async def stream(self, intent: Any, **options: Any) -> AsyncIterator[_InstantStream]:
        from apikeyrouter.domain.request import StreamChunk

        n = max(1, intent.max_tokens or 1)
        chunks = [StreamChunk(delta="word ", model="gpt-4o-mini") for _ in range(n - 1)]
        chunks.append(StreamChunk(delta="end.", finish_reason="stop", model="gpt-4o-mini"))
        yield _InstantStream(self.canned.metadata, chunks)


async def serve() -> None:
    from apikeyrouter.proxy import ProxyApp
    from apikeyrouter.proxy.server import serve_proxy
    from apikeyrouter.secret import Secret

    _quiet_logging("warning")
    app = ProxyApp(_StreamingRouter(), client_tokens=[Secret(CLIENT_TOKEN)])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(serve_proxy, app, "127.0.0.1", 0)
        print(f"server listening on {listening.url}", flush=True)


def _script(stream: bool, chunks: int) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": chunks}
    if stream:
        body["stream"] = True
    return (
        f"wrk.method = \"POST\"\nwrk.body = '{json.dumps(body)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {CLIENT_TOKEN}"\n'
    )


_CHAT_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer sk-client-0123456789\r\nContent-Length: 90\r\n\r\n" + b"x" * 90
)


def parse_figures(n: int = 20000) -> dict[str, float]:
    """CPU µs per request read, ours and h11's, each the best of interleaved blocks."""
    import h11

    from apikeyrouter.proxy._parse import RequestParser

    def ours() -> None:
        parser = RequestParser(16384)
        for _ in range(n):
            parser.feed(_CHAT_REQUEST)
            parser.head()
            parser.read()
            parser.next_request()

    def theirs() -> None:
        for _ in range(n):
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
            conn.receive_data(_CHAT_REQUEST)
            while type(conn.next_event()) is not h11.EndOfMessage:
                pass

    best = {"parse_us": float("inf"), "h11_parse_us": float("inf")}
    for _ in range(3):
        for name, run in (("parse_us", ours), ("h11_parse_us", theirs)):
            start = time.process_time()
            run()
            best[name] = min(best[name], (time.process_time() - start) / n * 1e6)
    return {k: round(v, 2) for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile")
    parser.add_argument("--role", choices=["serve"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        trio.run(serve)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install -y wrk)")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpus, load_cpus = ("0", f"1-{(os.cpu_count() or 2) - 1}") if pin else (None, None)
    work = Path(tempfile.mkdtemp(prefix="apikeyrouter-server-side-"))
    scripts = {
        "chat": work / "chat.lua",
        "stream_short": work / "short.lua",
        "stream_long": work / "long.lua",
    }
    scripts["chat"].write_text(_script(False, 8))
    scripts["stream_short"].write_text(_script(True, 2))
    scripts["stream_long"].write_text(_script(True, args.chunks + 2))
    child = Child("server", [sys.executable, __file__, "--role", "serve"], server_cpus, work / "server.log")
    figures: dict[str, list[float]] = {k: [] for k in ("chat", "health", "stream_short", "stream_long")}
    rps: dict[str, list[float]] = {k: [] for k in figures}
    try:
        for kind in figures:  # warm-up: imports, first-use caches
            run_wrk(_url(child, kind), args.connections, 1, scripts.get(kind), load_cpus)
        for _ in range(args.rounds):
            for kind in figures:
                before = cpu_seconds(child.pid)
                result = run_wrk(_url(child, kind), args.connections, args.duration, scripts.get(kind), load_cpus)
                spent = cpu_seconds(child.pid) - before
                figures[kind].append(spent / (result["rps"] * args.duration) * 1e6)
                rps[kind].append(result["rps"])
        if args.profile:
            _profile(child, args, scripts["chat"], load_cpus, Path(args.profile))
    finally:
        child.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    out = {
        "chat_cpu_us": round(med["chat"], 1),
        "health_cpu_us": round(med["health"], 1),
        "stream_open_cpu_us": round(med["stream_short"], 1),
        "stream_chunk_cpu_us": round((med["stream_long"] - med["stream_short"]) / args.chunks, 2),
        "chat_rps": round(statistics.median(rps["chat"]), 1),
        "health_rps": round(statistics.median(rps["health"]), 1),
        **parse_figures(),
        "rounds": args.rounds,
        "connections": args.connections,
    }
    print(json.dumps(out))


def run_wrk(url: str, connections: int, duration: float, script: Path | None, cpus: str | None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s", url]
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk run against {url} went wrong:\n{out}")
    return {"rps": float(found.group(1))}


def _url(child: Child, kind: str) -> str:
    return child.url + ("/health" if kind == "health" else "/v1/chat/completions")


def _profile(child: Child, args: argparse.Namespace, script: Path, load_cpus: str | None, out: Path) -> None:
    raw = out.with_suffix(".collapsed")
    duration = max(args.duration, 4)
    spy = subprocess.Popen(
        [_py_spy(), "record", "-p", str(child.pid), "-d", str(duration), "-r", "200", "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    before = cpu_seconds(child.pid)
    result = run_wrk(child.url + "/v1/chat/completions", args.connections, duration - 1, script, load_cpus)
    cpu_us = (cpu_seconds(child.pid) - before) / (result["rps"] * (duration - 1)) * 1e6
    spy.wait()
    summarize_profile(raw, out, cpu_us)


if __name__ == "__main__":
    main()
