"""Canary keys through every way an upstream can fail while quoting them, through a real `apikeyrouter serve`
process (debug-level JSON logs on its stderr): afterwards no canary, and no 8 characters of one, may appear in
its logs, in any GET endpoint, in any debug-channel answer or event, or in any answer a client received."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from apikeyrouter.debug.client import call as debug_call
from apikeyrouter.debug.client import subscribe
from tests.chaos.env import ADMIN, ADMIN_TOKEN, CLIENT, CLIENT_TOKEN, short_tempdir
from tests.chaos.hostile import Answer, HostileServer, Seen, json_answer, raw_answer, sse, sse_event
from tests.chaos.scenarios import GOOD_EVENTS, chunk, healthy, request_body

ROOT = Path(__file__).resolve().parents[2]
CANARIES = {
    "canary-sk": "sk-7Hq2Lm9Rt4Wc8Nd3Xv6Bz1Kp5Fj0Gs3Yu7Ae2Ti",  # a prefix everyone redacts
    "canary-plain": "ZQX9k3Jd8Hf2Lq9Zm4Xv7Bn1Cw6Rt5Yp0Ua8Se3Gi",  # nothing marks it as a key but itself
}
PIECE = 8


def masked(key: str) -> str:
    return f"{key[:4]}****{key[-4:]}"


def _error(message: str, *, type: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": None}}


# Each failure path quotes the key of the request it answers, the way real providers (and broken ones) do.
FAILURES: dict[str, Callable[[str], Answer]] = {
    "401 echoing the key": lambda k: json_answer(
        401, _error(f"Incorrect API key provided: {k}.", type=f"auth-{k[:10]}", code=f"invalid_api_key:{k[-12:]}")
    ),
    "401 echoing it masked": lambda k: json_answer(
        401, _error(f"Incorrect API key provided: {masked(k)} ({k[:3]}...{k[-4:]}).", code="invalid_api_key")
    ),
    "429 quoting it": lambda k: json_answer(
        429, _error(f"Rate limit reached for key {k} on requests", code="rate_limit_exceeded"), [("retry-after", "1")]
    ),
    "500 with the key in a text body": lambda k: raw_answer(500, f"crashed on {k}".encode(), content_type="text/plain"),
    "500 with the key in a JSON body": lambda k: json_answer(500, {"detail": {"key": k, "trace": f"auth={k}"}}),
    "400 (passed to the caller) quoting it": lambda k: json_answer(400, _error(f"bad request for key {k[5:30]}")),
    "invalid JSON quoting it": lambda k: raw_answer(200, f'{{"choices": [{{"message": {{"content": "{k}'.encode()),
    "a stream cut after quoting it": lambda k: sse([GOOD_EVENTS[0], f'data: {{"oops": "{k}'.encode()], done=False),
    "a stream error event quoting it": lambda k: sse([GOOD_EVENTS[0], sse_event(_error(f"key {k} revoked"))]),
    "a stream chunk of garbage quoting it": lambda k: sse([sse_event(chunk("hi")), f"data: {k}\n\n".encode()]),
}  # fmt: skip
STREAMED = {name for name in FAILURES if "stream" in name}


def pieces(secret: str) -> set[str]:
    return {secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1)}


def leaks(text: str) -> list[str]:
    return sorted({f"{key_id}:{p}" for key_id, secret in CANARIES.items() for p in pieces(secret) if p in text})


@attrs.define
class Serve:
    url: str
    socket: str
    stderr: bytearray


@asynccontextmanager
async def serve_process(upstream: str, work: str) -> AsyncIterator[Serve]:
    """`python -m apikeyrouter serve` as a subprocess, logging at debug level to a stderr we keep."""
    socket = f"{work}/debug.sock"
    keys = "".join(
        f'[[keys]]\nid = "{key_id}"\nprovider = "hostile"\nsecret_env = "{key_id.upper().replace("-", "_")}"\n'
        for key_id in CANARIES
    )
    await trio.Path(work, "router.toml").write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
client_tokens_env = "CHAOS_CLIENT"
admin_token_env = "CHAOS_ADMIN"
grace_period = 1.0
request_deadline = 2.0

[budgets]
global = {{ limit = "100" }}

[[providers]]
id = "hostile"
kind = "openai"
base_url = "{upstream}/v1"
models = ["gpt-4o-mini"]
read_timeout = 0.5

{keys}
[debug]
enabled = true
socket = "{socket}"

[logging]
level = "debug"
"""
    )
    secrets = {key_id.upper().replace("-", "_"): secret for key_id, secret in CANARIES.items()}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHAOS_CLIENT": CLIENT_TOKEN, "CHAOS_ADMIN": ADMIN_TOKEN}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "apikeyrouter", "serve", "--config", f"{work}/router.toml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, **secrets},
    )
    assert process.stdout is not None and process.stderr is not None
    stderr = bytearray()
    async with trio.open_nursery() as nursery:

        async def drain(stream: Any, into: bytearray) -> None:
            async for part in stream:
                into.extend(part)

        nursery.start_soon(drain, process.stderr, stderr)
        out = bytearray()
        url = None
        with trio.fail_after(20):
            async for part in process.stdout:
                out.extend(part)
                found = [line for line in out.decode().splitlines()[:-1] if "listening on " in line]
                if found:
                    url = found[0].split("listening on ", 1)[1].split()[0]
                    break
        assert url is not None, stderr.decode()[-2000:]
        nursery.start_soon(drain, process.stdout, out)
        try:
            yield Serve(url, socket, stderr)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10) as cs:
                cs.shield = True
                await process.wait()
            if process.returncode is None:
                process.kill()
            nursery.cancel_scope.cancel()


async def revive(http: httpx.AsyncClient) -> None:
    """Every canary back in rotation (a 401 invalidates it, a 429 throttles it): same material, rotated."""
    for key_id, secret in CANARIES.items():
        response = await http.post(f"/keys/{key_id}/rotate", headers=ADMIN, json={"secret": secret})
        assert response.status_code == 200, response.text


async def everything_shown(http: httpx.AsyncClient, socket: str) -> list[tuple[str, str]]:
    """(where, text) for every GET endpoint and every debug-channel answer."""
    shown: list[tuple[str, str]] = []
    paths = ["/state", "/keys", "/decisions", "/metrics", "/health", "/health/ready"]
    paths += [f"/keys/{key_id}" for key_id in CANARIES]
    decisions = (await http.get("/decisions", headers=ADMIN)).json()["data"]
    paths += [f"/decisions/{d['id']}" for d in decisions]
    for path in paths:
        response = await http.get(path, headers=ADMIN)
        shown.append((f"GET {path}", f"{response.headers}\n{response.text}"))
    models = await http.get("/v1/models", headers=CLIENT)
    shown.append(("GET /v1/models", models.text))
    tree = await debug_call(socket, "tree", state=True)
    shown.append(("debug tree", json.dumps(tree)))
    shown.append(("debug tree (plain)", json.dumps(await debug_call(socket, "tree"))))
    names: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        names.append(node["name"])
        stack.extend(node["children"])
    for name in names:
        shown.append((f"debug actor {name}", json.dumps(await debug_call(socket, "actor", id=name))))
    shown.append(("debug keys", json.dumps(await debug_call(socket, "keys"))))
    for key_id in CANARIES:
        shown.append((f"debug key {key_id}", json.dumps(await debug_call(socket, "key", id=key_id))))
        transitions = await debug_call(socket, "transitions", key=key_id, limit=1000)
        shown.append((f"debug transitions {key_id}", json.dumps(transitions)))
    shown.append(("debug decisions", json.dumps(await debug_call(socket, "decisions", limit=1000))))
    shown.append(("debug ping", json.dumps(await debug_call(socket, "ping"))))
    return shown


async def test_no_piece_of_a_canary_key_leaves_the_process_whatever_the_upstream_quotes() -> None:
    failure: list[Callable[[str], Answer]] = [lambda k: healthy(Seen("POST", "/", {}, b""))]
    server = HostileServer(lambda seen: failure[0](seen.secret))
    shown: list[tuple[str, str]] = []
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(server.serve)
        with short_tempdir() as work, trio.fail_after(60):
            async with serve_process(upstream, work) as proc, httpx.AsyncClient(base_url=proc.url) as http:

                async def follow() -> None:
                    async for event in subscribe(proc.socket, []):
                        events.append(event)

                nursery.start_soon(follow)
                await trio.sleep(0.2)  # subscribed before the first failure
                for name, answer in FAILURES.items():
                    failure[0] = answer
                    for _ in range(2):  # one request per key, more or less: the router spreads them
                        response = await http.post(
                            "/v1/chat/completions", headers=CLIENT, json=request_body(name in STREAMED)
                        )
                        shown.append(
                            (f"answer to {name!r}", f"{response.status_code} {response.headers}\n{response.text}")
                        )
                    await revive(http)
                seen_keys = {s.secret for s in server.seen}
                assert seen_keys == set(CANARIES.values())  # both canaries met every kind of failure, more or less
                shown += await everything_shown(http, proc.socket)
                await trio.sleep(0.2)  # the last events reach the subscriber
            shown.append(("serve stderr", proc.stderr.decode(errors="replace")))
        shown.append(("debug events", json.dumps(events)))
        nursery.cancel_scope.cancel()
    assert len(events) > 10 and any("lifecycle" in json.dumps(e) or e["kind"] == "key.transition" for e in events)
    found = {where: leaks(text) for where, text in shown if leaks(text)}
    assert found == {}, {w: (f, next(t for x, t in shown if x == w)[:3000]) for w, f in found.items()}
