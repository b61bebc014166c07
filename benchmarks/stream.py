"""Streaming benchmark: through `serve` (time to first token, concurrent streams, relay cost) and the adapter.

    python benchmarks/stream.py [--part all|proxy|adapter] [--levels 50,100,200,300,400,500,600]
                                [--chunks 20] [--streams 200] [--before-src DIR]

Proxy part (`--part proxy`). Three processes: a paced upstream (this script, `--child upstream`: trio +
h11, keep-alive, counts the connections it accepts; every streamed request gets `max_tokens` OpenAI-shaped
chunks, the first at once, then one every 50 ms, each written when it is due), `python -m apikeyrouter
serve` in front of it (a generated config: one OpenAI-kind provider with `max_connections = --pool`,
`--keys` keys with limits far above the load, logging at warning, debug channel off), and this process
as the client (raw trio sockets, a fresh connection per stream, every event timed as its bytes arrive).
`serve` is driven only through its public HTTP surface, so the figures hold whatever server it runs.

- added TTFT, c=1: time from the request sent to the first content event, direct to the upstream and
  through `serve`, `--ttft-rounds` of each interleaved; the median of the per-round differences;
- relay CPU per chunk: `serve`'s CPU time (/proc) over `--cpu-streams` concurrent streams of `--chunks`
  chunks, minus the same with 2 chunks, divided by the extra chunks (medians of two interleaved runs);
- the concurrency ladder: at each level `c`, `c` streams of `--chunks` chunks at once direct, then
  through `serve`; chunk gaps (between successive content events) p50/p99 of each; a level is kept when
  every stream completes and the proxy's gap p99 is within 1.2x the direct one at that level (what the
  client sees of the upstream on the same machine at the same moment); the ladder stops at the first
  level not kept. `max_concurrent_streams_kept` is the highest level kept;
- new upstream connections per stream: connections the upstream accepted while the proxy's streams ran,
  per stream (keep-alive reuse: goal ≤ the pool size per 200 streams, i.e. near 0 once warm).

Relay part (`--part relay`): the routed stream below the proxy, in this process: `router.stream()` of
an embedded router read to its end against the paced upstream with no pause (adapter, SSE reader,
request pipeline, our h11 client and httpx), CPU for 200-chunk streams minus 2-chunk ones, per chunk.

Adapter part (`--part adapter`): `OpenAIAdapter.open_stream` reads `--streams` streams one after the
other, each to its end, against `benchmarks/h11_upstream.py --mode sse` (its chunked terminator written
after `data: [DONE]`), through `h11` (the adapter as it is), `httpx` (its client on httpx's default
transport) and, with `--before-src DIR`, the adapter of an older tree in a child process: new upstream
connections per `--streams` streams and CPU µs per stream.

Goals (issue 10): added TTFT ≤ 1 ms, ≥ 500 streams kept, relay ≤ 100 µs of CPU per chunk, connections
opened ≤ the pool size. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from h11_upstream import start_upstream  # noqa: E402

# -- through the adapter: connection reuse ------------------------------------------------------------------


async def accepted(port: int) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        return int((await client.get(f"http://127.0.0.1:{port}/stats")).text)


async def run_streams(port: int, streams: int, transport: str) -> dict[str, float]:
    # Imported here: in the `before` child the adapter comes from the older tree on PYTHONPATH.
    from apikeyrouter.adapters import OpenAIAdapter
    from apikeyrouter.domain.request import ChatMessage, RequestIntent
    from apikeyrouter.secret import Secret

    adapter = OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1")
    if transport == "httpx":
        adapter.make_transport = lambda: httpx.AsyncHTTPTransport(limits=adapter.limits)  # type: ignore[method-assign]
    intent = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "Say hello."),), max_tokens=8)
    secret = Secret("sk-bench-0123456789")
    adapter.estimate(intent)  # token counting loads its tables once: not a cost of streaming
    before = await accepted(port)
    cpu0 = time.process_time()
    async with adapter.make_client() as client:
        for _ in range(streams):
            async with adapter.open_stream(client, intent, secret) as stream:
                text = "".join([chunk.delta async for chunk in stream])
            assert text == "Hello.", text
    cpu = time.process_time() - cpu0
    # The second `/stats` call opens a connection of its own: not one of the streams'.
    return {"new_connections": await accepted(port) - before - 1, "cpu_us_per_stream": round(cpu / streams * 1e6, 1)}


# -- through `serve`: time to first token, gaps under concurrency, connections, relay CPU per chunk ----------

PACED_GAP_S = 0.05  # upstream's pause between two chunks


def _chunk_event(i: int) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _final_event(chunks: int) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"


async def _paced_conn(state: dict[str, int], gap: float, stream: trio.SocketStream) -> None:
    """One keep-alive connection of the paced upstream: each streamed chat request is answered with
    `max_tokens` chunks, the first at once, then one every `gap` seconds, each written as it is due."""
    state["accepted"] += 1
    conn = h11.Connection(h11.SERVER)
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                target, body = event.target, b""
                continue
            if isinstance(event, h11.Data):
                body += event.data
                continue
            if not isinstance(event, h11.EndOfMessage):
                return
            if target == b"/stats":
                text = str(state["accepted"]).encode()
                head = [("content-type", "text/plain"), ("content-length", str(len(text)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=head))
                    + conn.send(h11.Data(data=text))
                    + conn.send(h11.EndOfMessage())
                )
            else:
                chunks = int(json.loads(body).get("max_tokens") or 20)
                head = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=head)) + conn.send(h11.Data(data=_chunk_event(0)))
                )
                due = trio.current_time()
                for i in range(1, chunks):
                    due += gap
                    await trio.sleep_until(due)
                    await stream.send_all(conn.send(h11.Data(data=_chunk_event(i))))
                await stream.send_all(conn.send(h11.Data(data=_final_event(chunks))) + conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def run_paced_upstream(gap: float) -> None:
    state = {"accepted": 0}
    async with trio.open_nursery() as nursery:
        handler = partial(_paced_conn, state, gap)
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1", backlog=4096))
        print(f"port {listeners[0].socket.getsockname()[1]}", flush=True)


def serve_toml(upstream_port: int, keys: int, max_connections: int) -> str:
    entries = "".join(
        f'\n[[keys]]\nid = "s{i}"\nprovider = "upstream"\nsecret = "sk-stream-bench-{i:04d}"\n'
        "rpm = 100000000\ntpm = 100000000000\n"
        for i in range(keys)
    )
    return f"""# Written by benchmarks/stream.py.
[server]
host = "127.0.0.1"
port = 0
grace_period = 1.0

[[providers]]
id = "upstream"
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["gpt-4o-mini"]
max_connections = {max_connections}
{entries}
[debug]
enabled = false

[logging]
level = "warning"
"""


def _request(chunks: int) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "max_tokens": chunks,
            "messages": [{"role": "user", "content": "Count for me."}],
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


@attrs.define
class StreamResult:
    ttft: float  # seconds from the request's last byte sent to the first content event received
    gaps: list[float]  # between successive content events
    ok: bool


async def one_stream(port: int, chunks: int) -> StreamResult:
    """One streamed request on a fresh connection; events are timed as the bytes arrive."""
    clock = trio.current_time
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return StreamResult(math.nan, [], False)
    seen: list[float] = []
    async with stream:
        try:
            await stream.send_all(_request(chunks))
            sent = clock()
            buf = b""
            head_done = done = False
            while True:
                data = await stream.receive_some(65536)
                now = clock()
                if not data:
                    break
                buf += data
                if not head_done:
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    if not head.startswith(b"HTTP/1.1 200"):
                        return StreamResult(math.nan, [], False)
                    head_done = True
                cut = buf.rfind(b"\n\n") + 2  # complete events end with a blank line
                if cut >= 2:
                    complete, buf = buf[:cut], buf[cut:]
                    seen.extend([now] * complete.count(b'"content"'))
                    done = done or b"[DONE]" in complete
                if done and buf.endswith(b"0\r\n\r\n"):  # the chunked body's terminator
                    break
        except (trio.BrokenResourceError, OSError):
            done = False
    if not seen:
        return StreamResult(math.nan, [], False)
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    return StreamResult(seen[0] - sent, gaps, done and len(seen) >= chunks)


async def concurrent_streams(port: int, count: int, chunks: int) -> list[StreamResult]:
    results: list[StreamResult] = []

    async def run() -> None:
        results.append(await one_stream(port, chunks))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(run)
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def _upstream_accepted(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stats HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.rpartition(b"\r\n\r\n")[2]) - 1  # this connection itself is not a stream's


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """`serve` as a child process in front of the paced upstream (another child); this process is the client."""
    env = dict(os.environ)  # `serve` from PYTHONPATH as given (benchmarks/ab.py sets it per checkout)
    env.setdefault("PYTHONPATH", str(ROOT / "src"))
    up = subprocess.Popen(
        [sys.executable, __file__, "--child", "upstream", "--gap", str(PACED_GAP_S)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert up.stdout is not None
    up_port = int(up.stdout.readline().split()[1])
    work = Path(tempfile.mkdtemp(prefix="akr-stream-"))
    config = work / "router.toml"
    config.write_text(serve_toml(up_port, args.keys, args.pool))
    serve = subprocess.Popen(
        [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=(work / "serve.log").open("w"),
        text=True,
        env=env,
    )
    try:
        assert serve.stdout is not None
        for line in serve.stdout:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                proxy_port = int(found.group(1))
                break
        else:
            raise SystemExit(f"serve did not start:\n{(work / 'serve.log').read_text()[-2000:]}")
        return trio.run(_proxy_rounds, args, up_port, proxy_port, serve.pid)
    finally:
        for proc in (serve, up):
            proc.terminate()
            proc.wait()


async def _proxy_rounds(args: argparse.Namespace, up_port: int, proxy_port: int, serve_pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await concurrent_streams(proxy_port, 8, 2)  # warm-up: tokenizer, pool, index orders
    # Added time to first token at c=1: direct and through the proxy, interleaved, medians.
    direct, proxied = [], []
    for _ in range(args.ttft_rounds):
        direct.append((await one_stream(up_port, 2)).ttft)
        proxied.append((await one_stream(proxy_port, 2)).ttft)
    out["direct_ttft_us"] = round(statistics.median(direct) * 1e6)
    out["proxy_ttft_us"] = round(statistics.median(proxied) * 1e6)
    out["added_ttft_us"] = round(statistics.median(p - d for p, d in zip(proxied, direct, strict=True)) * 1e6)
    # The relay's CPU per chunk: serve's CPU for streams of many chunks minus streams of 2, per extra chunk.
    per_stream = {}
    for chunks in (2, args.chunks, 2, args.chunks):
        cpu0 = _cpu_seconds(serve_pid)
        await concurrent_streams(proxy_port, args.cpu_streams, chunks)
        per_stream.setdefault(chunks, []).append((_cpu_seconds(serve_pid) - cpu0) / args.cpu_streams)
    lo, hi = statistics.median(per_stream[2]), statistics.median(per_stream[args.chunks])
    out["relay_cpu_us_per_chunk"] = round((hi - lo) / (args.chunks - 2) * 1e6, 1)
    if args.profile:
        await _profile_relay(args, proxy_port, serve_pid)
    out["serve_cpu_us_per_stream_2_chunks"] = round(lo * 1e6)
    # Concurrency ladder: each level direct, then through the proxy; kept while the proxy's gap p99 stays
    # within 1.2x the direct one at that level and every stream completes.
    proxied_streams = 0
    levels: dict[str, dict[str, float]] = {}
    kept = 0
    for c in args.levels:
        d = await concurrent_streams(up_port, c, args.chunks)
        before = _upstream_accepted(up_port)
        p = await concurrent_streams(proxy_port, c, args.chunks)
        opened = _upstream_accepted(up_port) - before - 1  # minus the `before` query's own connection
        proxied_streams += c
        d_gaps = [g for r in d for g in r.gaps]
        p_gaps = [g for r in p for g in r.gaps]
        fails = sum(not r.ok for r in p) + sum(not r.ok for r in d)
        row = {
            "direct_gap_p50_ms": round(_pct(d_gaps, 0.5) * 1e3, 2),
            "direct_gap_p99_ms": round(_pct(d_gaps, 0.99) * 1e3, 2),
            "proxy_gap_p50_ms": round(_pct(p_gaps, 0.5) * 1e3, 2),
            "proxy_gap_p99_ms": round(_pct(p_gaps, 0.99) * 1e3, 2),
            "failures": fails,
            "new_upstream_connections": opened,
        }
        levels[str(c)] = row
        good = fails == 0 and row["proxy_gap_p99_ms"] <= 1.2 * row["direct_gap_p99_ms"]
        print(
            f"c={c:>4}: gap p50/p99 direct {row['direct_gap_p50_ms']:.1f}/{row['direct_gap_p99_ms']:.1f} ms,"
            f" proxy {row['proxy_gap_p50_ms']:.1f}/{row['proxy_gap_p99_ms']:.1f} ms; failures {fails};"
            f" new upstream connections {opened} {'kept' if good else 'NOT kept'}",
            flush=True,
        )
        if not good:
            break
        kept = c
    out["levels"] = levels
    out["max_concurrent_streams_kept"] = kept
    opened_total = sum(int(row["new_upstream_connections"]) for row in levels.values())
    out["new_upstream_connections_per_stream"] = round(opened_total / max(1, proxied_streams), 3)
    return out


async def _profile_relay(args: argparse.Namespace, proxy_port: int, serve_pid: int) -> None:
    """py-spy on `serve` while `--cpu-streams` streams of `--chunks` chunks run, summarised like proxy.py's."""
    from proxy import _py_spy, summarize_profile

    raw = Path(args.profile).with_suffix(".collapsed")
    seconds = max(2, round(args.chunks * PACED_GAP_S) + 1)
    command = [_py_spy(), "record", "-p", str(serve_pid), "-d", str(seconds), "-r", "250", "-f", "raw", "-o", str(raw)]
    spy = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await trio.sleep(0.5)
    cpu0 = _cpu_seconds(serve_pid)
    await concurrent_streams(proxy_port, args.cpu_streams, args.chunks)
    cpu_us = (_cpu_seconds(serve_pid) - cpu0) / (args.cpu_streams * args.chunks) * 1e6
    await spy.wait()
    summarize_profile(raw, Path(args.profile), cpu_us)  # "per request" there: per chunk here


# -- the relay below the proxy: the routed stream's CPU per chunk, in-process ------------------------------


async def _relay_rounds(port: int, rounds: int) -> dict[str, float]:
    """`router.stream()` read to its end (adapter, SSE reader, request pipeline, our h11 client), against
    the paced upstream with no pause, in this process: its CPU for streams of 200 chunks minus streams of
    2, per extra chunk; rounds interleaved, medians."""
    from apikeyrouter import ApiKeyRouter
    from apikeyrouter.adapters import OpenAIAdapter
    from apikeyrouter.observe.logs import configure_logging

    async def read(router: ApiKeyRouter, chunks: int) -> int:
        chat = {
            "model": "gpt-4o-mini",
            "stream": True,
            "max_tokens": chunks,
            "messages": [{"role": "user", "content": "Count."}],
        }
        n = 0
        async with router.stream(chat) as handle:
            async for _ in handle:
                n += 1
        return n

    per_stream: dict[int, list[float]] = {2: [], 200: []}
    with open(os.devnull, "w") as sink:  # noqa: ASYNC230 - opened once, before anything is measured
        configure_logging("warning", "json", sink)
        async with ApiKeyRouter() as router:
            await router.register_provider("upstream", OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1"))
            for i in range(3):
                await router.register_key(f"sk-relay-bench-{i:04d}", "upstream", key_id=f"r{i}")
            for _ in range(5):
                await read(router, 2)  # warm-up: tokenizer, pool, index orders
            for _ in range(rounds):
                for chunks in (2, 200):
                    cpu0 = time.process_time()
                    for _ in range(10):
                        await read(router, chunks)
                    per_stream[chunks].append((time.process_time() - cpu0) / 10)
    lo, hi = statistics.median(per_stream[2]), statistics.median(per_stream[200])
    return {"relay_cpu_us_per_chunk": round((hi - lo) / 198 * 1e6, 1), "cpu_us_per_stream_2_chunks": round(lo * 1e6)}


def relay_benchmark(args: argparse.Namespace) -> dict[str, float]:
    up = subprocess.Popen(
        [sys.executable, __file__, "--child", "upstream", "--gap", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert up.stdout is not None
        port = int(up.stdout.readline().split()[1])
        result = trio.run(_relay_rounds, port, args.relay_rounds)
    finally:
        up.terminate()
        up.wait()
    print(f"in-process relay: {result['relay_cpu_us_per_chunk']} CPU µs per chunk (adapter + pipeline + h11 client)")
    return result


def adapter_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_upstream("sse")
    try:
        result: dict[str, dict[str, float]] = {}
        for name in ("h11", "httpx"):
            result[name] = trio.run(run_streams, port, args.streams, name)
        if args.before_src:
            env = {**os.environ, "PYTHONPATH": str(args.before_src.resolve())}
            cmd = [sys.executable, __file__, "--child", "before", "--port", str(port), "--streams", str(args.streams)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            result["before"] = json.loads(out.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait()
    print(f"{'client':<8} {'new upstream connections':>25} {'cpu us/stream':>14}   (per {args.streams} streams)")
    for name, figures in result.items():
        print(f"{name:<8} {figures['new_connections']:>25} {figures['cpu_us_per_stream']:>14}")
    return {
        "streams": args.streams,
        **{f"{name}_{k}": v for name, figures in result.items() for k, v in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("all", "proxy", "relay", "adapter"), default="all")
    parser.add_argument("--relay-rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=200, help="adapter part: sequential streams")
    parser.add_argument("--before-src", type=Path, help="adapter part: the src of an older tree")
    parser.add_argument("--levels", default="50,100,200,300,400,500,600", help="proxy part: concurrency ladder")
    parser.add_argument("--chunks", type=int, default=20, help="proxy part: chunks per stream")
    parser.add_argument("--ttft-rounds", type=int, default=30)
    parser.add_argument("--cpu-streams", type=int, default=50)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--pool", type=int, default=1024, help="the provider's max_connections")
    parser.add_argument("--child", choices=("before", "upstream"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="proxy part: py-spy `serve` during the relay CPU run, summary to FILE")
    parser.add_argument("--gap", type=float, default=PACED_GAP_S, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.levels = [int(c) for c in str(args.levels).split(",")]
    if args.child == "before":
        print(json.dumps(trio.run(run_streams, args.port, args.streams, "default")))
        return
    if args.child == "upstream":
        trio.run(run_paced_upstream, args.gap)
        return
    sys.path.insert(0, str(ROOT / "src"))
    result: dict[str, Any] = {}
    if args.part in ("all", "proxy"):
        proxy = proxy_benchmark(args)
        print(
            f"added TTFT at c=1: {proxy['added_ttft_us']} µs (direct {proxy['direct_ttft_us']} µs,"
            f" proxy {proxy['proxy_ttft_us']} µs); relay CPU {proxy['relay_cpu_us_per_chunk']} µs/chunk;"
            f" streams kept: {proxy['max_concurrent_streams_kept']};"
            f" new upstream connections per stream: {proxy['new_upstream_connections_per_stream']}"
        )
        result["proxy"] = proxy
    if args.part in ("all", "relay"):
        result["relay"] = relay_benchmark(args)
    if args.part in ("all", "adapter"):
        result["adapter"] = adapter_benchmark(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
