"""Client transport benchmark: our `H11Transport` (direct and under httpx) vs httpx's default transport vs
raw h11 on a socket, and the OpenAI adapter's whole client side on either path.

    python benchmarks/transport.py [--requests 2000] [--rounds 5] [--only direct,adapter,...]

One upstream process (`benchmarks/h11_upstream.py --mode fixed`, trio + h11, keep-alive) answers a POST of
a small chat body with a fixed JSON completion. In this process, in the same run, each client sends
`--requests` requests sequentially (c=1) and from 32 concurrent tasks (c=32):

- `direct`: our transport's own interface (`H11Transport.request`, body read whole, orjson);
- `h11`: our transport under `httpx.AsyncClient`;
- `httpx`: `httpx.AsyncClient` with its default transport (httpcore), as the adapters used once;
- `raw`: h11 on persistent trio sockets, one per task, no httpx at all: the floor;
- `adapter`: `OpenAIAdapter.complete` on the client `make_client` gives (a `PooledClient`: the direct path),
  i.e. the whole client side of a proxied request: body encoding, headers, the exchange, JSON, quota
  headers, the normalised answer;
- `adapter_httpx`: the same adapter on a plain `httpx.AsyncClient` over `H11Transport` (the httpx path).

`--mode sse`: the upstream streams an OpenAI event stream (4 events: 2 deltas, the usage chunk, `[DONE]`,
then the chunked terminator in its own write), and the clients are `stream` (`OpenAIAdapter.open_stream`
read to its end on the direct path) and `stream_httpx` (the same on the httpx path); `cpu_us` is per stream
and `chunk_cpu_us` per event (the socket-to-`StreamChunk` cost of one event, the stream's opening included).

Rounds interleave the clients so machine noise hits them alike; each figure is the median over rounds.
`cpu_us` is this process's CPU time (user + system) per request, the steadiest figure on a shared
machine; `wall_us` is the elapsed time per request. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import httpx
import orjson
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from h11_upstream import start_upstream  # noqa: E402

from apikeyrouter.adapters import OpenAIAdapter  # noqa: E402
from apikeyrouter.adapters.transport import H11Transport  # noqa: E402
from apikeyrouter.domain.request import ChatMessage, RequestIntent  # noqa: E402
from apikeyrouter.secret import Secret  # noqa: E402

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 8}
).encode()
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30.0)
CONCURRENCY = 32
CLIENTS = ("direct", "h11", "httpx", "raw", "adapter", "adapter_httpx")
SSE_CLIENTS = ("stream", "stream_httpx")
SSE_EVENTS = 4
INTENT = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "Say hello in one word."),), max_tokens=8)
KEY = Secret("sk-bench-0123456789abcdef")

Send = Callable[[], Awaitable[None]]


class RawH11:
    """One persistent trio socket with an h11 client: the least a request can cost here."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self.head = [
            ("host", f"127.0.0.1:{port}"),
            ("content-type", "application/json"),
            ("content-length", str(len(BODY))),
        ]

    async def send(self) -> None:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        conn = self.conn
        out = conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=self.head))
        await self.stream.send_all(out + conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
        json.loads(body)
        conn.start_next_cycle()

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


async def run_clients(send_for: Callable[[int], Send], requests: int, concurrency: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request for `requests` requests from `concurrency` tasks."""
    per_task = requests // concurrency
    senders = [send_for(i) for i in range(concurrency)]
    async with trio.open_nursery() as nursery:  # warm: connections open before the clock starts
        for send in senders:
            nursery.start_soon(send)

    async def worker(send: Send) -> None:
        for _ in range(per_task):
            await send()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for send in senders:
            nursery.start_soon(worker, send)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    total = per_task * concurrency
    return wall / total * 1e6, cpu / total * 1e6


async def one_round(
    port: int, requests: int, concurrency: int, only: tuple[str, ...]
) -> dict[str, tuple[float, float]]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out: dict[str, tuple[float, float]] = {}
    headers = {"content-type": "application/json"}

    for name in ("h11", "httpx"):
        if name not in only:
            continue
        transport = H11Transport(limits=LIMITS) if name == "h11" else None
        async with httpx.AsyncClient(transport=transport, limits=LIMITS, trust_env=False) as client:

            async def send(client: httpx.AsyncClient = client) -> None:
                response = await client.post(url, content=BODY, headers=headers)
                response.json()

            out[name] = await run_clients(lambda _: send, requests, concurrency)

    if "direct" in only:
        pool = H11Transport(limits=LIMITS)
        steps = httpx.Timeout(5.0, read=120.0, write=30.0, pool=10.0)

        async def direct() -> None:
            response = await pool.request("POST", url, headers, BODY, steps)
            orjson.loads(await response.read(1 << 25))

        out["direct"] = await run_clients(lambda _: direct, requests, concurrency)
        await pool.aclose()

    for name in ("adapter", "adapter_httpx"):
        if name not in only:
            continue
        adapter = OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1", limits=LIMITS)
        if name == "adapter":
            client = adapter.make_client()
        else:
            client = httpx.AsyncClient(transport=H11Transport(limits=LIMITS), timeout=adapter.timeout, trust_env=False)
        async with client:

            async def call(client: httpx.AsyncClient = client, adapter: OpenAIAdapter = adapter) -> None:
                await adapter.complete(client, INTENT, KEY)

            out[name] = await run_clients(lambda _: call, requests, concurrency)

    for name in SSE_CLIENTS:
        if name not in only:
            continue
        adapter = OpenAIAdapter(base_url=f"http://127.0.0.1:{port}/v1", limits=LIMITS)
        if name == "stream":
            client = adapter.make_client()
        else:
            client = httpx.AsyncClient(transport=H11Transport(limits=LIMITS), timeout=adapter.timeout, trust_env=False)
        async with client:

            async def stream(client: httpx.AsyncClient = client, adapter: OpenAIAdapter = adapter) -> None:
                async with adapter.open_stream(client, INTENT, KEY) as chunks:
                    async for _ in chunks:
                        pass

            out[name] = await run_clients(lambda _: stream, requests, concurrency)

    if "raw" in only:
        raws = [RawH11(port) for _ in range(concurrency)]
        out["raw"] = await run_clients(lambda i: raws[i].send, requests, concurrency)
        for raw in raws:
            await raw.aclose()
    return out


def median(rounds: list[dict[str, tuple[float, float]]], name: str, index: int) -> float:
    return round(statistics.median(r[name][index] for r in rounds), 1)


async def bench(port: int, requests: int, rounds: int, only: tuple[str, ...]) -> dict[str, float]:
    result: dict[str, float] = {}
    for concurrency in (1, CONCURRENCY):
        seen: list[dict[str, tuple[float, float]]] = []
        for i in range(rounds):
            seen.append(await one_round(port, requests, concurrency, only))
            shown = ", ".join(f"{n} {w:.0f}/{c:.0f}" for n, (w, c) in seen[-1].items())
            print(f"c={concurrency} round {i + 1}: wall/cpu us per request: {shown}", flush=True)
        for name in only:
            result[f"{name}_c{concurrency}_wall_us"] = median(seen, name, 0)
            result[f"{name}_c{concurrency}_cpu_us"] = median(seen, name, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("fixed", "sse"), default="fixed", help="the upstream's answers")
    parser.add_argument("--only", help=f"comma-separated, of {', '.join(CLIENTS)} (fixed) or {', '.join(SSE_CLIENTS)}")
    args = parser.parse_args()
    names = SSE_CLIENTS if args.mode == "sse" else CLIENTS
    only = tuple(name for name in names if args.only is None or name in args.only.split(","))
    proc, port = start_upstream(args.mode)
    try:
        result = trio.run(bench, port, args.requests, args.rounds, only)
    finally:
        proc.terminate()
        proc.wait()
    print()
    print(f"{'client':<14} {'c=1 wall us':>12} {'c=1 cpu us':>11} {'c=32 wall us':>13} {'c=32 cpu us':>12}")
    for name in only:
        print(
            f"{name:<14} {result[f'{name}_c1_wall_us']:>12} {result[f'{name}_c1_cpu_us']:>11} "
            f"{result[f'{name}_c32_wall_us']:>13} {result[f'{name}_c32_cpu_us']:>12}"
        )
    if args.mode == "sse":
        for name in only:
            for c in (1, CONCURRENCY):
                result[f"{name}_c{c}_chunk_cpu_us"] = round(result[f"{name}_c{c}_cpu_us"] / SSE_EVENTS, 1)
    result["cpus"] = os.cpu_count() or 0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
