"""How many requests per second the simulator serves (it must never be our benchmarks' bottleneck).

Starts `apikeyrouter sim` in its own process, then drives it from this process with 32 keep-alive
connections, each a tight loop of `POST /v1/chat/completions` (non-streamed, distinct keys so the
default rate limits never trip). The load generator writes pre-built requests on raw trio sockets and
parses only the status line and Content-Length, so it costs far less per request than the server does.
Prints one line per run and a final JSON line: {"bench": "sim", "req_per_s": median, ...}.

    python benchmarks/sim.py [--concurrency 32] [--seconds 3] [--runs 5] [--stream]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


def build_request(port: int, key: str, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say something short about routers."}],
            "max_tokens": 16,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(stream: trio.SocketStream, buf: bytearray) -> int:
    """Read one response off a keep-alive connection; returns its status. Handles Content-Length and chunked."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    del buf[:end]
    marker = head.find(b"content-length:")
    if marker >= 0:
        length = int(head[marker + 15 : head.index(b"\r\n", marker)])
        while len(buf) < length:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("short body")
            buf += data
        del buf[:length]
        return status
    while b"\r\n0\r\n\r\n" not in buf:  # chunked: wait for the terminating chunk
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("short chunked body")
        buf += data
    del buf[: buf.index(b"\r\n0\r\n\r\n") + 7]
    return status


async def one_run(port: int, concurrency: int, seconds: float, stream: bool) -> tuple[float, dict[int, int]]:
    counts: dict[int, int] = {}
    done = 0
    deadline = trio.current_time() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        request = build_request(port, f"sk-bench-{i}", stream)
        conn = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with conn:
            while trio.current_time() < deadline:
                await conn.send_all(request)
                status = await read_response(conn, buf)
                counts[status] = counts.get(status, 0) + 1
                done += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(worker, i)
    return done / (trio.current_time() - start), counts


# Limits high enough that the benchmark measures serving, not the 429 path.
SIM_TOML = "[defaults]\nrpm = 100000000\ntpm = 100000000000\n"

def start_sim(config_path: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "apikeyrouter", "sim", "--port", "0", "--config", str(config_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"sim did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of plain JSON")
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(SIM_TOML)
    proc, port = start_sim(Path(f.name))
    try:
        trio.run(one_run, port, args.concurrency, 0.5, args.stream)  # warm-up: connections, tokenizer caches
        rates = []
        for run in range(args.runs):
            rate, counts = trio.run(one_run, port, args.concurrency, args.seconds, args.stream)
            rates.append(rate)
            print(f"run {run + 1}: {rate:,.0f} req/s statuses={counts}", flush=True)
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(f.name)
    print(
        json.dumps(
            {
                "bench": "sim",
                "server": "h11",
                "mode": "stream" if args.stream else "json",
                "concurrency": args.concurrency,
                "runs": args.runs,
                "seconds_per_run": args.seconds,
                "req_per_s": round(statistics.median(rates)),
                "min": round(min(rates)),
                "max": round(max(rates)),
            }
        )
    )


if __name__ == "__main__":
    main()
