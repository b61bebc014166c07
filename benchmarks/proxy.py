"""Proxy benchmark: latency and throughput straight to an upstream vs through the proxy, in one run.

    python benchmarks/proxy.py [--duration 5] [--repeats 3] [--profile docs/proxy-profile.txt]

Needs `wrk` for the load (`apt-get install -y wrk`); without it a raw-socket trio load generator in its
own process is used (slower to drive load, so its req/s figures are a floor). Three processes:

- upstream: a minimal fixed HTTP/1.1 server (trio, raw sockets, keep-alive) answering every POST with
  the same OpenAI `chat.completion` JSON, so the upstream costs as little as possible;
- proxy: `ProxyApp` on hypercorn's trio worker, in front of a minimal forwarding `RouterAPI` (one
  `httpx.AsyncClient` to the upstream). The real router replaces `ForwardingRouter` later;
- load: wrk (or the fallback), one connection for latency, 32 for throughput.

With two or more cores, the proxy is pinned to core 0 and the upstream and load to the rest, so the
figures are "one proxy process on one core". Each figure is the median of `repeats` rounds (direct and
proxied measured alternately, so machine noise hits both alike). The last line is one JSON object:
direct_p50_us, proxy_p50_us, added_p50_us, direct_rps, proxy_rps, proxy_rss_mib (plus p99s).
`--profile FILE` also samples the proxy with py-spy under the concurrency-32 load and writes the top costs.
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
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import trio

CLIENT_TOKEN = "sk-bench-client-token"
CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 8}
)
UPSTREAM_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15},
    }
).encode()
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(UPSTREAM_BODY)).encode()
    + b"\r\n\r\n"
    + UPSTREAM_BODY
)


# -- upstream: a fixed fast HTTP/1.1 server -------------------------------------------------------------


async def _upstream_connection(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):  # load generators reset connections when they finish
        await _upstream_serve(stream)


async def _upstream_serve(stream: trio.SocketStream) -> None:
    buf = b""
    async with stream:
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                end = buf.find(b"\r\n\r\n")
            head = buf[:end].lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            while len(buf) < total:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            buf = buf[total:]
            await stream.send_all(UPSTREAM_RESPONSE)


async def run_upstream(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _upstream_connection, port, host="127.0.0.1"))
        print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)


# -- proxy: ProxyApp in front of a minimal forwarding router ----------------------------------------------


class ForwardingRouter:
    """Just enough `RouterAPI` to forward non-streaming chat to one upstream with one httpx client."""

    def __init__(self, upstream: str) -> None:
        import httpx

        from apikeyrouter.events import EventBus

        self.events = EventBus()
        self.client = httpx.AsyncClient(
            base_url=upstream,
            headers={"authorization": "Bearer sk-upstream-key"},
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
            timeout=30.0,
        )

    async def route(self, intent: Any, *, objective: Any = None, client: Any = None) -> Any:
        from apikeyrouter.intent import ResponseMetadata, SystemResponse, Usage

        start = trio.current_time()
        body: dict[str, Any] = {
            "model": intent.model,
            "messages": [{"role": m.role, "content": m.content} for m in intent.messages],
        }
        if intent.max_tokens is not None:
            body["max_tokens"] = intent.max_tokens
        response = await self.client.post("/v1/chat/completions", json=body)
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return SystemResponse(
            content=choice["message"]["content"],
            model=data["model"],
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
            raw={"id": data.get("id")},
            metadata=ResponseMetadata(
                key_used="bench-1",
                provider="upstream",
                cost=Decimal(0),
                attempts=1,
                latency_s=trio.current_time() - start,
                decision_id="d-bench",
            ),
        )

    @asynccontextmanager
    async def stream(self, intent: Any, **_: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the benchmark forwards non-streaming requests only")
        yield  # pragma: no cover

    def models(self) -> list[str]:
        return ["gpt-4o-mini"]

    def ready(self) -> bool:
        return True

    def keys(self) -> list[dict[str, Any]]:
        return [{"id": "bench-1", "provider": "upstream", "lifecycle": "active", "breaker": "closed"}]

    def key(self, key_id: str) -> dict[str, Any] | None:
        return None

    def transitions(self, key_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return []

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return []

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        return None

    def tree(self) -> Any:
        from apikeyrouter.actors.base import TreeNode

        return TreeNode(name="bench", kind="router", status="running", restarts=0)

    def get_state_summary(self) -> dict[str, Any]:
        return {}

    async def register_key(
        self, secret: str, provider: str, metadata: Mapping[str, str] | None = None, **_: Any
    ) -> Any:
        raise NotImplementedError

    async def revoke_key(self, key_id: str, reason: str = "") -> None:
        raise NotImplementedError

    async def rotate_key(self, key_id: str, new_secret: str) -> None:
        raise NotImplementedError

    async def update_key_state(self, key_id: str, state: str, reason: str = "") -> None:
        raise NotImplementedError


async def run_proxy(upstream: str, port: int, log_requests: bool) -> None:
    import structlog

    from apikeyrouter.proxy import ProxyApp, serve_proxy
    from apikeyrouter.secret import Secret

    # Production-like logging (one JSON line per request), written to /dev/null instead of a terminal.
    devnull = await trio.open_file(os.devnull, "w")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(devnull.wrapped),
        cache_logger_on_first_use=True,
    )
    router = ForwardingRouter(upstream)
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)], log_requests=log_requests)  # type: ignore[arg-type]
    async with router.client, trio.open_nursery() as nursery:
        listening = await nursery.start(partial(serve_proxy, app, "127.0.0.1", port, grace=1.0))
        print(f"PORT {listening.port}", flush=True)


async def run_app_only(n: int) -> None:
    """The ASGI app's own cost per request: no server, no sockets, a router that answers at once."""
    import structlog

    from apikeyrouter.intent import ResponseMetadata, SystemResponse, Usage
    from apikeyrouter.proxy import ProxyApp
    from apikeyrouter.secret import Secret

    devnull = await trio.open_file(os.devnull, "w")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(devnull.wrapped),
        cache_logger_on_first_use=True,
    )
    canned = SystemResponse(
        content="Hello.",
        model="gpt-4o-mini",
        usage=Usage(13, 2),
        finish_reason="stop",
        metadata=ResponseMetadata("bench-1", "upstream", Decimal(0), 1, 0.0, "d-bench"),
    )

    class Instant(ForwardingRouter):
        async def route(self, intent: Any, *, objective: Any = None, client: Any = None) -> Any:
            return canned

    router = Instant("http://127.0.0.1:9")
    app = ProxyApp(router, client_tokens=[Secret(CLIENT_TOKEN)])  # type: ignore[arg-type]
    body = CHAT_BODY.encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {CLIENT_TOKEN}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    request = {"type": "http.request", "body": body, "more_body": False}

    async def once() -> None:
        messages = iter([request])

        async def receive() -> Any:
            try:
                return next(messages)
            except StopIteration:
                await trio.sleep_forever()

        async def send(message: Any) -> None:
            pass

        await app(scope, receive, send)

    for _ in range(1000):
        await once()
    start = time.perf_counter()
    for _ in range(n):
        await once()
    print(json.dumps({"app_only_us": (time.perf_counter() - start) / n * 1e6}))


# -- load ---------------------------------------------------------------------------------------------------

WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{CHAT_BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {CLIENT_TOKEN}"
"""

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, connections: int, duration: float, script: Path | None, cpus: str | None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url]
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or not percentiles or errors is not None:
        raise RuntimeError(f"wrk run against {url} went wrong:\n{out}")
    return {"p50_us": _us(percentiles["50"]), "p99_us": _us(percentiles["99"]), "rps": float(rps.group(1))}


async def _load_worker(port: int, stop_at: float, latencies: list[float]) -> None:
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CHAT_BODY)}\r\n\r\n{CHAT_BODY}"
    ).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buf = b""
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await stream.send_all(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].lower()
                    at = head.find(b"content-length:")
                    stop = head.find(b"\r\n", at)
                    total = end + 4 + int(head[at + 15 : stop if stop >= 0 else len(head)])
                    if len(buf) >= total:
                        if not buf.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError(buf[:200].decode(errors="replace"))
                        buf = buf[total:]
                        break
                buf += await stream.receive_some(65536)
            latencies.append((time.perf_counter() - start) * 1e6)


async def run_load(port: int, connections: int, duration: float) -> None:
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_load_worker, port, stop_at, latencies)
    latencies.sort()
    print(
        json.dumps(
            {
                "p50_us": latencies[len(latencies) // 2],
                "p99_us": latencies[int(len(latencies) * 0.99)],
                "rps": len(latencies) / duration,
            }
        )
    )


def run_fallback_load(url: str, connections: int, duration: float, cpus: str | None) -> dict[str, float]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    command = [sys.executable, __file__, "--role", "load", "--port", port, "-c", str(connections)]
    command += ["--duration", str(duration)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# -- orchestration ---------------------------------------------------------------------------------------


def start(role: str, extra: list[str], cpus: str | None) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, __file__, "--role", role, *extra]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{role} did not start")
    return proc, int(line.split()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # `pip install py-spy` into the same environment
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


def _package(frame: str) -> str:
    """`func (trio/_core/_run.py)` -> `trio`; the proxy's own modules and this script by name."""
    where = frame.rpartition("(")[2].rstrip(")")
    if where.startswith("apikeyrouter/"):
        return "apikeyrouter." + where.split("/")[1].removesuffix(".py")
    if "/" not in where:
        return "stdlib" if where != "proxy.py" else "benchmark stub (ForwardingRouter)"
    return where.split("/")[0]


def summarize_profile(raw: Path, out: Path, top: int = 30) -> None:
    """py-spy's collapsed stacks -> the functions where the proxy spends its samples (self and total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += count
        by_package[_package(frames[-1])] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"samples: {samples}", "", "own time by package:"]
    lines += [f"{n / samples:7.2%}  {p}" for p, n in by_package.most_common()]
    lines += ["", f"top {top} by own time (self %):"]
    lines += [f"{n / samples:7.2%}  {f}" for f, n in own.most_common(top)]
    lines += ["", f"top {top} by total time (inclusive %):"]
    lines += [f"{n / samples:7.2%}  {f}" for f, n in total.most_common(top)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: len(by_package) + top + 5]))


def orchestrate(args: argparse.Namespace) -> None:
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None and not args.no_pin
    proxy_cpus, other_cpus = ("0", "1-" + str((os.cpu_count() or 2) - 1)) if pin else (None, None)
    wrk = shutil.which("wrk") is not None
    if not wrk:
        print("wrk not found (apt-get install -y wrk): using the trio load generator", file=sys.stderr)
    upstream, upstream_port = start("upstream", [], other_cpus)
    proxy_extra = ["--upstream", f"http://127.0.0.1:{upstream_port}"] + (["--no-log"] if args.no_log else [])
    proxy, proxy_port = start("proxy", proxy_extra, proxy_cpus)
    direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script_file:
        script_file.write(WRK_SCRIPT)
    script = Path(script_file.name)

    def load(url: str, connections: int, duration: float) -> dict[str, float]:
        if wrk:
            return run_wrk(url, connections, duration, None if url.endswith("/health") else script, other_cpus)
        return run_fallback_load(url, connections, duration, other_cpus)

    try:
        for url in (direct_url, proxy_url):  # warm up connections, caches, the JIT-less interpreter's allocators
            load(url, 8, 2)
        health_url = f"http://127.0.0.1:{proxy_port}/health"
        rounds: dict[str, list[dict[str, float]]] = {
            "direct1": [],
            "proxy1": [],
            "direct32": [],
            "proxy32": [],
            "health1": [],
            "health32": [],
        }
        for i in range(args.repeats):
            for name, url in (("direct", direct_url), ("proxy", proxy_url), ("health", health_url)):
                rounds[f"{name}1"].append(load(url, 1, args.duration))
                rounds[f"{name}32"].append(load(url, 32, args.duration))
            print(
                f"round {i + 1}: direct p50 {rounds['direct1'][-1]['p50_us']:.0f} us, "
                f"/health p50 {rounds['health1'][-1]['p50_us']:.0f} us, "
                f"proxy p50 {rounds['proxy1'][-1]['p50_us']:.0f} us, "
                f"direct {rounds['direct32'][-1]['rps']:.0f} req/s, proxy {rounds['proxy32'][-1]['rps']:.0f} req/s",
                flush=True,
            )
        rss = rss_mib(proxy.pid)
        app_only = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--role", "app"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
            ).stdout
        )["app_only_us"]
        if args.profile:
            raw = Path(args.profile).with_suffix(".collapsed")
            spy = subprocess.Popen(
                [
                    *(_py_spy(), "record", "--pid", str(proxy.pid), "--duration", str(int(args.duration) + 1)),
                    *("--rate", "400", "--format", "raw", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            load(proxy_url, 32, args.duration)
            spy.wait()
            summarize_profile(raw, Path(args.profile))
    finally:
        proxy.terminate()
        upstream.terminate()
        proxy.wait()
        upstream.wait()
        script.unlink()

    def med(key: str, field: str) -> float:
        return round(statistics.median(r[field] for r in rounds[key]), 1)

    result = {
        "direct_p50_us": med("direct1", "p50_us"),
        "proxy_p50_us": med("proxy1", "p50_us"),
        "added_p50_us": round(
            statistics.median(
                p["p50_us"] - d["p50_us"] for p, d in zip(rounds["proxy1"], rounds["direct1"], strict=True)
            ),
            1,
        ),
        "direct_rps": med("direct32", "rps"),
        "proxy_rps": med("proxy32", "rps"),
        "proxy_rss_mib": round(rss, 1),
        "direct_p99_us": med("direct1", "p99_us"),
        "proxy_p99_us": med("proxy1", "p99_us"),
        "proxy_p50_us_c32": med("proxy32", "p50_us"),
        "health_p50_us": med("health1", "p50_us"),
        "health_rps": med("health32", "rps"),
        "app_only_us": round(app_only, 1),
        "load": "wrk" if wrk else "trio",
        "pinned": pin,
        "repeats": args.repeats,
        "duration_s": args.duration,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "upstream", "proxy", "load", "app"], default="bench")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", help="write the proxy's py-spy profile summary to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-log", action="store_true", help="proxy without its per-request log event")
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("-c", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        trio.run(run_upstream, args.port)
    elif args.role == "proxy":
        trio.run(run_proxy, args.upstream, args.port, not args.no_log)
    elif args.role == "app":
        trio.run(run_app_only, 20000)
    elif args.role == "load":
        trio.run(run_load, args.port, args.c, args.duration)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
