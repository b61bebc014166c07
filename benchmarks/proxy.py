"""Proxy benchmark: latency and throughput straight to an upstream vs through `apikeyrouter serve`, in one run.

    python benchmarks/proxy.py [--upstream sim|fixed] [--duration 5] [--repeats 3] [--profile FILE]

Load comes from `wrk` (`apt-get install -y wrk`); without it, a raw-socket trio load generator in its own
process is used (it costs more per request than wrk, so its req/s figures are a floor). Processes:

- upstream: `--upstream sim` (default) is `python -m apikeyrouter sim --port 0` with limits high enough never
  to trip; `--upstream fixed` is a minimal fixed HTTP/1.1 server in this script (trio, raw sockets,
  keep-alive) answering every POST with the same `chat.completion` JSON, so the upstream costs next to nothing;
- floor: `benchmarks/floor.py`, the least a forwarder on this stack costs (trio + h11 server, a keep-alive
  h11 client pool, orjson; no routing), measured in the same rounds so `serve`'s ratio to it shows;
- proxy: the real thing, `python -m apikeyrouter serve --config <generated router.toml>`: the supervision tree
  (router actor, key actors, provider actor with httpx) behind `ProxyApp` on our h11 server, with
  four simulated keys whose limits never interfere, the debug channel off and logging at "warning" (no
  per-request log line). A second `serve` at logging level "info" (one JSON line per request, to a file) is
  measured once, so the cost of request logging shows;
- load: wrk (or the fallback), one connection for latency, 32 for throughput.

With two or more cores the proxy is pinned to core 0 and the upstream and the load to the others, so the
figures are "one proxy process on one core" (the floor is pinned the same way). Each figure is the median of
`repeats` rounds; in each round direct, floor, proxied and `/health` are measured in turn, so machine noise
hits them alike. `proxy_cpu_us` is the
proxy's CPU time (user + system) per request under the concurrency-32 load: at 100% CPU, req/s is its inverse.
Two in-process figures help split the proxied latency: `embedded_p50_us` (the library `router.route()`
against the same upstream, no HTTP server) and `app_only_us` (`ProxyApp` alone with a router that answers
at once, no sockets). The last line is one JSON object: direct_p50_us, proxy_p50_us, added_p50_us, direct_rps,
proxy_rps, proxy_rss_mib, proxy_cpu_us, the floor's figures (floor_added_p50_us, floor_rps, floor_cpu_us) and
the proxy's ratios to them (proxy_over_floor_*), plus p99s, the info-logging figures and the rest.
`--profile FILE` also samples the proxy with py-spy (`pip install py-spy`) under the concurrency-32 load and
writes its top costs, grouped by stage of the request path, to FILE (collapsed stacks next to it).
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
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import trio
from h11_upstream import BODY as UPSTREAM_BODY  # the same canned answer as the transport benchmark's

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TOKEN = "sk-bench-client-token"
KEYS = 4
CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 8}
)
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(UPSTREAM_BODY)).encode()
    + b"\r\n\r\n"
    + UPSTREAM_BODY
)
# Limits far above anything one core can push, so neither the simulator nor the key actors ever refuse.
SIM_TOML = "[defaults]\nrpm = 1000000000\ntpm = 1000000000000\n"


def env_for_children() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env["BENCH_CLIENT_TOKEN"] = CLIENT_TOKEN
    for i in range(1, KEYS + 1):
        env[f"BENCH_KEY_{i}"] = f"sk-sim-bench-{i}"
    return env


def router_toml(upstream_url: str, level: str) -> str:
    keys = "".join(
        f'\n[[keys]]\nid = "bench-{i}"\nprovider = "upstream"\nsecret_env = "BENCH_KEY_{i}"\n'
        "rpm = 100000000\ntpm = 100000000000\n"
        for i in range(1, KEYS + 1)
    )
    return f"""# Written by benchmarks/proxy.py.
[server]
host = "127.0.0.1"
port = 0
client_tokens_env = "BENCH_CLIENT_TOKEN"
grace_period = 1.0

[routing]
objective = "reliability"

[[providers]]
id = "upstream"
kind = "openai"
base_url = "{upstream_url}/v1"
models = ["gpt-4o-mini"]
{keys}
[debug]
enabled = false

[logging]
level = "{level}"
format = "json"
"""


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


async def run_fixed_upstream(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _upstream_connection, port, host="127.0.0.1"))
        # The same line `apikeyrouter sim` prints, so both upstreams start the same way.
        print(f"fixed upstream listening on http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)


# -- in-process figures: the library router alone, the app alone -------------------------------------


def _quiet_logging(level: str) -> None:
    from apikeyrouter.observe.logs import configure_logging

    configure_logging(level, "json", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)


async def run_embedded(config_path: str, duration: float) -> None:
    """`router.route()` in-process against the same upstream: the router, key actors, provider actor, adapter
    and httpx, without the HTTP server or `ProxyApp`. Sequential for latency, then 32 tasks for req/s."""
    from apikeyrouter.config import load_config
    from apikeyrouter.runtime import open_router

    _quiet_logging("warning")
    intent = json.loads(CHAT_BODY)
    async with open_router(load_config(config_path)) as router:
        for _ in range(200):
            await router.route(intent)
        latencies: list[float] = []
        stop_at = time.perf_counter() + duration
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await router.route(intent)
            latencies.append((time.perf_counter() - start) * 1e6)
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await router.route(intent)
                done += 1

        stop_at = time.perf_counter() + duration
        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(worker)
    latencies.sort()
    print(json.dumps({"p50_us": latencies[len(latencies) // 2], "p99_us": _p99(latencies), "rps32": done / duration}))


class _InstantRouter:
    """Just enough of `RouterAPI` for `ProxyApp` to serve non-streaming chat with a canned answer."""

    def __init__(self) -> None:
        from apikeyrouter.domain.request import ResponseMetadata, SystemResponse, Usage
        from apikeyrouter.observe import EventBus

        self.events = EventBus()
        self.canned = SystemResponse(
            content="Hello.",
            model="gpt-4o-mini",
            usage=Usage(13, 2),
            finish_reason="stop",
            metadata=ResponseMetadata("bench-1", "upstream", Decimal(0), 1, 0.0, "d-bench"),
        )

    async def route(self, intent: Any, **options: Any) -> Any:  # objective, client, tags: unused
        return self.canned

    def budgets(self) -> dict[str, Any]:
        return {}

    def models(self) -> list[str]:
        return ["gpt-4o-mini"]

    def ready(self) -> bool:
        return True

    def keys(self) -> list[dict[str, Any]]:
        return []


class _NullResponse:
    """Where the app's answer goes when there is no socket: `http11.Response`'s surface, writing nothing."""

    started = finished = False
    status = 0

    async def respond(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status

    async def start(self, status: int, headers: Any) -> None:
        self.status = status

    async def send(self, data: bytes) -> None:
        pass

    async def end(self, data: bytes = b"") -> None:
        pass


async def run_app_only(n: int, level: str) -> None:
    """The app's own cost per request: no server, no sockets, a router that answers at once. At level
    "info" it includes the per-request log line (JSON, written to /dev/null)."""
    from apikeyrouter.proxy import ProxyApp
    from apikeyrouter.proxy._parse import parse_head
    from apikeyrouter.proxy.http11 import Request
    from apikeyrouter.secret import Secret

    _quiet_logging(level)
    app = ProxyApp(_InstantRouter(), client_tokens=[Secret(CLIENT_TOKEN)])  # type: ignore[arg-type]
    body = CHAT_BODY.encode()
    head = parse_head(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer %s\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n" % (CLIENT_TOKEN.encode(), len(body))
    )

    class BodyOnly:  # the part of a connection a request reads its body from
        def body_complete(self) -> bool:
            return True

        async def read_body(self, limit: int) -> bytes:
            return body

    conn = BodyOnly()

    async def once() -> int:
        response = _NullResponse()
        await app(Request(conn, head), response)  # type: ignore[arg-type]
        return response.status

    if (status := await once()) != 200:
        raise SystemExit(f"the app answered {status}, not 200: the app-only figure would measure an error path")

    for _ in range(1000):
        await once()
    blocks = []
    for _ in range(10):  # the fastest block: other processes on this core only ever add time
        start = time.perf_counter()
        for _ in range(n // 10):
            await once()
        blocks.append((time.perf_counter() - start) / (n // 10) * 1e6)
    print(json.dumps({"app_only_us": min(blocks)}))


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


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_wrk(url: str, connections: int, duration: float, script: Path | None, cpus: str | None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url]
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    # wrk pads a latency of a second or more ("1.64s "): allow trailing blanks
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or set(percentiles) != {"50", "99"} or errors is not None:
        raise RuntimeError(f"wrk run against {url} went wrong:\n{out}")
    return {"p50_us": _us(percentiles["50"]), "p99_us": _us(percentiles["99"]), "rps": float(rps.group(1))}


def _http_request(port: int, path: str) -> bytes:
    if path == "/health":
        return f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CHAT_BODY)}\r\n\r\n{CHAT_BODY}"
    ).encode()


async def read_answer(stream: trio.SocketStream, buf: bytes) -> tuple[bytes, bool]:
    """Read one content-length framed answer; (bytes left over, whether it was a 200). soak.py uses it too."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            at = head.find(b"content-length:")
            stop = head.find(b"\r\n", at)
            total = end + 4 + int(head[at + 15 : stop if stop >= 0 else len(head)])
            if len(buf) >= total:
                return buf[total:], buf.startswith(b"HTTP/1.1 200")
        data = await stream.receive_some(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        buf += data


async def _load_worker(port: int, request: bytes, stop_at: float, latencies: list[float]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buf = b""
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await stream.send_all(request)
            buf, ok = await read_answer(stream, buf)
            if not ok:
                raise RuntimeError("the proxy answered something other than 200")
            latencies.append((time.perf_counter() - start) * 1e6)


async def run_load(port: int, path: str, connections: int, duration: float) -> None:
    latencies: list[float] = []
    request = _http_request(port, path)
    stop_at = time.perf_counter() + duration
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_load_worker, port, request, stop_at, latencies)
    latencies.sort()
    print(
        json.dumps(
            {"p50_us": latencies[len(latencies) // 2], "p99_us": _p99(latencies), "rps": len(latencies) / duration}
        )
    )


def run_fallback_load(url: str, connections: int, duration: float, cpus: str | None) -> dict[str, float]:
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)", url)
    assert match is not None, url
    command = [sys.executable, __file__, "--role", "load", "--port", match.group(1), "--path", match.group(2)]
    command += ["-c", str(connections), "--duration", str(duration)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# -- processes ---------------------------------------------------------------------------------------------


class Child:
    """A subprocess that prints `... listening on http://host:port ...` on stdout once it serves."""

    def __init__(self, name: str, command: list[str], cpus: str | None, log: Path) -> None:
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        self.name = name
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env_for_children())
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends when the child exits: then it failed to start
            found = re.search(r"listening on (http://\S+)", line)
            if found is not None:
                self.url = found.group(1)
                return
        self.proc.wait()
        raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_python(args: list[str], cpus: str | None) -> dict[str, Any]:
    command = [sys.executable, *args]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env_for_children()).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- profile summary ------------------------------------------------------------------------------------------


def _module(frame: str) -> str:
    """`func (trio/_core/_run.py:123)` -> `trio/_core/_run.py` (py-spy names files from their sys.path entry)."""
    where = re.sub(r":\d+\)$", "", frame.rpartition(" (")[2]).rstrip(")")
    for marker in ("site-packages/", "/src/"):
        if marker in where:
            return where.rpartition(marker)[2]
    return where


def _package(module: str) -> str:
    if module.startswith("apikeyrouter/"):
        return "apikeyrouter." + module.split("/")[1].removesuffix(".py")
    return module.split("/")[0] if "/" in module else "stdlib"


def _func(frame: str) -> str:
    return frame.rpartition(" (")[0]


# Stages of a proxied request, matched from the innermost frame outwards: the first frame that belongs to a
# stage owns the sample. trio, h11, the stdlib, attrs and `apikeyrouter.domain` own nothing themselves: their
# samples go to whoever called them (h11 under the adapters is the client side, under http11 the server side;
# json under the adapter is parsing the upstream body, under ProxyApp writing the response).
_STAGES: list[tuple[str, str]] = [
    ("tiktoken", "tiktoken estimate"),
    ("apikeyrouter/adapters/tokens.py", "tiktoken estimate"),
    ("structlog", "structlog"),
    ("apikeyrouter/observe/logs.py", "structlog"),
    ("prometheus_client", "metrics"),
    ("apikeyrouter/observe/metrics.py", "metrics"),
    ("apikeyrouter/actors/key.py", "key actor"),
    ("apikeyrouter/actors/router.py", "router actor: decide"),
    ("apikeyrouter/actors/board.py", "snapshot board"),
    ("httpx/", "httpx/httpcore (client)"),
    ("httpcore/", "httpx/httpcore (client)"),
    ("apikeyrouter/adapters/transport.py", "client transport: h11 pool, sockets"),
    ("apikeyrouter/adapters/pool.py", "client transport: h11 pool, sockets"),
    ("apikeyrouter/adapters/", "adapter: body, JSON parse, normalise, headers"),
    ("apikeyrouter/actors/provider.py", "provider actor: client lease"),
    ("apikeyrouter/kernel/", "actor messaging: ask/tell, mailbox loop"),
    ("apikeyrouter/store/", "store writer"),
    ("apikeyrouter/observe/", "event bus"),
    ("apikeyrouter/runtime/", "runtime: route/acquire/settle glue"),
    ("apikeyrouter/proxy/http11.py", "h11 server (accept side)"),
    ("apikeyrouter/proxy/server.py", "h11 server (accept side)"),
    ("apikeyrouter/proxy/", "ProxyApp"),
]


def _stage(modules: list[str], funcs: list[str]) -> str:
    for i in range(len(modules) - 1, -1, -1):
        for prefix, stage in _STAGES:
            if modules[i].startswith(prefix):
                if stage == "key actor":  # which message: the handler is anywhere below the mailbox loop
                    names = {f.rpartition(".")[2] for m, f in zip(modules, funcs, strict=True) if m == prefix}
                    for name, what in (("_reserve", "reserve"), ("_settle", "settle"), ("_release", "release")):
                        if name in names:
                            return f"key actor: {what}"
                    return "key actor: other (publish, timer, loop)"
                return stage
    return "trio run loop, I/O wait, scheduling (no app frame)"


def _idle_worker(leaf: str) -> bool:
    """A trio worker thread parked waiting for its next job: py-spy samples it as running (it waits in
    `lock.acquire` with a timeout), but it costs no CPU, so it is left out of the shares."""
    return leaf.startswith("WorkerThread._work (") and "_thread_cache.py" in leaf


def summarize_profile(raw: Path, out: Path, cpu_us: float, top: int = 30) -> None:
    """py-spy's collapsed stacks -> samples by stage (with µs per request out of `cpu_us`, the CPU time per
    request measured while sampling), by package (own time) and by function (own, inclusive)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if _idle_worker(frames[-1]):
            continue
        samples += count
        modules = [_module(f) for f in frames]
        funcs = [_func(f) for f in frames]
        names = [f"{fn} ({m})" for fn, m in zip(funcs, modules, strict=True)]
        own[names[-1]] += count
        by_package[_package(modules[-1])] += count
        by_stage[_stage(modules, funcs)] += count
        for name in set(names):
            total[name] += count
    lines = [f"samples: {samples}; proxy CPU per request while sampled: {cpu_us:.0f} us", ""]
    lines += ["by stage (own time plus callees that own no stage), share and us per request:"]
    lines += [f"{n / samples:7.2%} {n / samples * cpu_us:6.0f} us  {s}" for s, n in by_stage.most_common()]
    lines += ["", "own time by package:"]
    lines += [f"{n / samples:7.2%}  {p}" for p, n in by_package.most_common(20)]
    lines += ["", f"top {top} by own time (self %):"]
    lines += [f"{n / samples:7.2%}  {f}" for f, n in own.most_common(top)]
    lines += ["", f"top {top} by total time (inclusive %):"]
    lines += [f"{n / samples:7.2%}  {f}" for f, n in total.most_common(top)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: len(by_stage) + 4]), flush=True)


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # `pip install py-spy` into the same environment
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


# -- orchestration -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def children(args: argparse.Namespace, work: Path, cpus: tuple[str | None, str | None]) -> Iterator[list[Child]]:
    """The upstream, the floor, the `serve` at warning level and the `serve` at info level, stopped in reverse."""
    proxy_cpus, other_cpus = cpus
    started: list[Child] = []
    try:
        if args.upstream == "sim":
            (work / "sim.toml").write_text(SIM_TOML)
            command = [sys.executable, "-m", "apikeyrouter", "sim", "--port", "0", "--config", str(work / "sim.toml")]
        else:
            command = [sys.executable, __file__, "--role", "upstream"]
        started.append(Child(f"upstream ({args.upstream})", command, other_cpus, work / "upstream.log"))
        floor = [sys.executable, str(Path(__file__).with_name("floor.py")), "--upstream", started[0].url]
        started.append(Child("floor", floor, proxy_cpus, work / "floor.log"))
        for level in ("warning", "info"):
            config = work / f"router-{level}.toml"
            config.write_text(router_toml(started[0].url, level))
            command = [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config)]
            started.append(Child(f"serve ({level})", command, proxy_cpus, work / f"serve-{level}.log"))
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def orchestrate(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None and not args.no_pin
    cpus = ("0", "1-" + str((os.cpu_count() or 2) - 1)) if pin else (None, None)
    proxy_cpus, other_cpus = cpus
    wrk = shutil.which("wrk") is not None
    if not wrk:
        print("wrk not found (apt-get install -y wrk): using the trio load generator", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="apikeyrouter-bench-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)

    def load(url: str, connections: int, duration: float) -> dict[str, float]:
        if wrk:
            return run_wrk(url, connections, duration, None if url.endswith("/health") else script, other_cpus)
        return run_fallback_load(url, connections, duration, other_cpus)

    def proxy_load(child: Child, url: str, connections: int, duration: float) -> dict[str, float]:
        """A load run on the proxy, with the proxy's CPU time per request."""
        cpu = cpu_seconds(child.pid)
        result = load(url, connections, duration)
        used = cpu_seconds(child.pid) - cpu
        result["cpu_us"] = used / (result["rps"] * round(duration)) * 1e6
        result["core_share"] = used / round(duration)  # < 1 under c=32: something else ran on the proxy's core
        return result

    rounds: dict[str, list[dict[str, float]]] = {}
    with children(args, work, cpus) as (upstream, floor, proxy, proxy_info):
        direct_url = f"{upstream.url}/v1/chat/completions"
        floor_url = f"{floor.url}/v1/chat/completions"
        proxy_url = f"{proxy.url}/v1/chat/completions"
        info_url = f"{proxy_info.url}/v1/chat/completions"
        health_url = f"{proxy.url}/health"
        for url in (direct_url, floor_url, proxy_url, info_url):  # warm up: connections, tiktoken, caches, allocators
            load(url, 8, 2)
        for i in range(args.repeats):
            targets = (("direct", direct_url), ("floor", floor_url), ("proxy", proxy_url), ("health", health_url))
            for name, url in targets:
                for c in (1, 32):
                    if name == "direct":
                        run = load(url, c, args.duration)
                    else:
                        run = proxy_load(floor if name == "floor" else proxy, url, c, args.duration)
                    rounds.setdefault(f"{name}{c}", []).append(run)
            print(
                f"round {i + 1}: direct p50 {rounds['direct1'][-1]['p50_us']:.0f} us, "
                f"floor p50 {rounds['floor1'][-1]['p50_us']:.0f} us, "
                f"proxy p50 {rounds['proxy1'][-1]['p50_us']:.0f} us, "
                f"/health p50 {rounds['health1'][-1]['p50_us']:.0f} us; "
                f"direct {rounds['direct32'][-1]['rps']:.0f} req/s, floor {rounds['floor32'][-1]['rps']:.0f} req/s "
                f"({rounds['floor32'][-1]['cpu_us']:.0f} us CPU/request), proxy {rounds['proxy32'][-1]['rps']:.0f} "
                f"req/s ({rounds['proxy32'][-1]['cpu_us']:.0f} us CPU/request)",
                flush=True,
            )
        # Logging at "info": one run at each concurrency, next to one more at "warning" so noise hits both alike.
        for name, child, url in (("info", proxy_info, info_url), ("proxy", proxy, proxy_url)):
            for c in (1, 32):
                rounds.setdefault(f"{name}{c}_pair", []).append(proxy_load(child, url, c, args.duration))
        log_lines = sum(1 for _ in (work / "serve-info.log").open())
        print(
            f"logging info: p50 {rounds['info1_pair'][0]['p50_us']:.0f} us vs {rounds['proxy1_pair'][0]['p50_us']:.0f},"
            f" {rounds['info32_pair'][0]['rps']:.0f} vs {rounds['proxy32_pair'][0]['rps']:.0f} req/s "
            f"({log_lines} log lines)",
            flush=True,
        )
        rss = rss_mib(proxy.pid)
        info_rss = rss_mib(proxy_info.pid)
        profile_cpu_us = 0.0
        if args.profile:
            raw = Path(args.profile).with_suffix(".collapsed")
            spy = subprocess.Popen(
                [
                    *(_py_spy(), "record", "--pid", str(proxy.pid), "--duration", str(int(args.duration) + 1)),
                    *("--rate", "400", "--format", "raw", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            profiled = proxy_load(proxy, proxy_url, 32, args.duration)
            profile_cpu_us = profiled["cpu_us"]
            spy.wait()
        # In-process splits, on the proxy's core (both `serve` processes sit idle meanwhile).
        embedded = run_python(
            [__file__, "--role", "embedded", "--config", str(work / "router-warning.toml"), "--duration", "3"],
            proxy_cpus,
        )
    app_only = run_python([__file__, "--role", "app", "--level", "warning"], proxy_cpus)["app_only_us"]
    app_only_info = run_python([__file__, "--role", "app", "--level", "info"], proxy_cpus)["app_only_us"]
    if args.profile:
        summarize_profile(Path(args.profile).with_suffix(".collapsed"), Path(args.profile), profile_cpu_us)
    shutil.rmtree(work, ignore_errors=True)

    def med(key: str, field: str) -> float:
        return round(statistics.median(r[field] for r in rounds[key]), 1)

    def added(key: str) -> float:
        pairs = zip(rounds[key], rounds["direct1"], strict=True)
        return round(statistics.median(p["p50_us"] - d["p50_us"] for p, d in pairs), 1)

    result = {
        "direct_p50_us": med("direct1", "p50_us"),
        "proxy_p50_us": med("proxy1", "p50_us"),
        "added_p50_us": added("proxy1"),
        "direct_rps": med("direct32", "rps"),
        "proxy_rps": med("proxy32", "rps"),
        "proxy_rss_mib": round(rss, 1),
        "upstream": args.upstream,
        "direct_p99_us": med("direct1", "p99_us"),
        "proxy_p99_us": med("proxy1", "p99_us"),
        "proxy_p50_us_c32": med("proxy32", "p50_us"),
        "proxy_p99_us_c32": med("proxy32", "p99_us"),
        "proxy_cpu_us": med("proxy32", "cpu_us"),
        "proxy_cpu_us_c1": med("proxy1", "cpu_us"),
        "floor_p50_us": med("floor1", "p50_us"),
        "floor_added_p50_us": added("floor1"),
        "floor_rps": med("floor32", "rps"),
        "floor_cpu_us": med("floor32", "cpu_us"),
        "proxy_over_floor_added_p50": round(added("proxy1") / max(added("floor1"), 1.0), 2),
        "proxy_over_floor_rps": round(med("proxy32", "rps") / med("floor32", "rps"), 3),
        "proxy_over_floor_cpu": round(med("proxy32", "cpu_us") / med("floor32", "cpu_us"), 2),
        "proxy_core_share_c32": round(statistics.median(r["core_share"] for r in rounds["proxy32"]), 2),
        "health_p50_us": med("health1", "p50_us"),
        "health_rps": med("health32", "rps"),
        "embedded_p50_us": round(embedded["p50_us"], 1),
        "embedded_rps": round(embedded["rps32"], 1),
        "app_only_us": round(app_only, 1),
        "log_info_p50_us": med("info1_pair", "p50_us"),
        "log_warning_p50_us": med("proxy1_pair", "p50_us"),
        "log_info_rps": med("info32_pair", "rps"),
        "log_warning_rps": med("proxy32_pair", "rps"),
        "log_info_cpu_us": med("info32_pair", "cpu_us"),
        "log_warning_cpu_us": med("proxy32_pair", "cpu_us"),
        "log_info_app_only_us": round(app_only_info, 1),
        "log_info_rss_mib": round(info_rss, 1),
        "load": "wrk" if wrk else "trio",
        "pinned": pin,
        "repeats": args.repeats,
        "duration_s": args.duration,
        "wall_s": round(time.perf_counter() - began),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", choices=["sim", "fixed"], default="sim", help="upstream kind (default sim)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is their median")
    parser.add_argument("--profile", help="write the proxy's py-spy profile summary to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--role", choices=["bench", "upstream", "load", "app", "embedded"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="/v1/chat/completions", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--level", default="warning", help=argparse.SUPPRESS)
    parser.add_argument("-c", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        trio.run(run_fixed_upstream, args.port)
    elif args.role == "app":
        trio.run(run_app_only, 20000, args.level)
    elif args.role == "load":
        trio.run(run_load, args.port, args.path, args.c, args.duration)
    elif args.role == "embedded":
        trio.run(run_embedded, args.config, args.duration)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
