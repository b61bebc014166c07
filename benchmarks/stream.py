"""Streaming benchmark (minimal): new upstream connections per 200 streamed requests through an adapter.

    python benchmarks/stream.py [--streams 200] [--before-src DIR]

One upstream process (`benchmarks/h11_upstream.py --mode sse`) answers every request with an OpenAI-shaped
event stream, chunked, its terminator written after `data: [DONE]`; it counts the connections it accepts.
`OpenAIAdapter.open_stream` reads `--streams` streams one after the other, each to its end, through:

- `h11`: the adapter as it is (its client on our `H11Transport`);
- `httpx`: the same adapter code with its client on httpx's default transport (httpcore);
- `before`: with `--before-src DIR` (the `src` of an older checkout, e.g. main before this change), the
  adapter from that tree, measured in a child process against the same upstream.

Prints new upstream connections per `--streams` streams and CPU µs per stream; the last line is one JSON
object. Goal (issue 10): connections opened ≤ the pool size (the adapters' default is 64).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from h11_upstream import start_upstream  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--child", choices=("before",), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trio.run(run_streams, args.port, args.streams, "default")))
        return
    sys.path.insert(0, str(ROOT / "src"))
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
    flat = {f"{name}_{k}": v for name, figures in result.items() for k, v in figures.items()}
    print(json.dumps({"streams": args.streams, **flat}))


if __name__ == "__main__":
    main()
