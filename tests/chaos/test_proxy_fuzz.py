"""Any request body a client can send, to `apikeyrouter serve` in front of a healthy simulator: the answer is a
2xx, or a 4xx in the OpenAI error shape; never a 5xx (with a healthy upstream, a 5xx can only be our fault).

One simulator and one `serve` process for the module (real processes, real sockets), so each example costs
one HTTP round trip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TOKEN = "sk-chaos-fuzz-client-0001"
SIM_TOML = "[defaults]\nrpm = 1000000000\ntpm = 1000000000000\n"


@attrs.frozen
class Proxy:
    http: httpx.Client  # one client for the module: building one costs more than a request
    stderr: Path


def _start(command: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    with log.open("w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found is not None:
            return proc, found.group(1)
    proc.wait()
    raise RuntimeError(f"{command} did not start:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FUZZ_CLIENT": CLIENT_TOKEN, "FUZZ_KEY": "sk-fuzz-key-1"}
    (work / "sim.toml").write_text(SIM_TOML)
    procs: list[subprocess.Popen[str]] = []
    try:
        sim, sim_url = _start(
            [sys.executable, "-m", "apikeyrouter", "sim", "--port", "0", "--config", str(work / "sim.toml")],
            work / "sim.log",
            env,
        )
        procs.append(sim)
        (work / "router.toml").write_text(
            f"""
[server]
host = "127.0.0.1"
port = 0
client_tokens_env = "FUZZ_CLIENT"
request_deadline = 5.0
grace_period = 1.0
max_body_bytes = 65536

[budgets]
global = {{ limit = "1000" }}

[[providers]]
id = "sim"
kind = "openai"
base_url = "{sim_url}/v1"
models = ["gpt-4o-mini"]

[[keys]]
id = "k1"
provider = "sim"
secret_env = "FUZZ_KEY"

[debug]
enabled = false

[logging]
level = "warning"
"""
        )
        serve, url = _start(
            [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(work / "router.toml")],
            work / "serve.log",
            env,
        )
        procs.append(serve)
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Proxy(http, work / "serve.log")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check(
    proxy: Proxy, content: bytes, content_type: str | None, extra: dict[str, str] | None = None, *, short: bool = False
) -> None:
    """`short`: the client asked for a deadline too short to be met, so a 504 `deadline_exceeded` is its answer."""
    head = {"authorization": f"Bearer {CLIENT_TOKEN}", **(extra or {})}
    if content_type is not None:
        head["content-type"] = content_type
    response = proxy.http.post("/v1/chat/completions", content=content, headers=head)
    if short and response.status_code == 504:
        assert response.json()["error"]["code"] == "deadline_exceeded"
        return
    assert response.status_code < 500, (response.status_code, response.text[:500], proxy.stderr.read_text()[-2000:])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    elif "text/event-stream" in response.headers.get("content-type", ""):
        assert response.text.endswith("data: [DONE]\n\n"), response.text[-300:]
        assert '"error"' not in response.text, response.text[-500:]
    else:
        assert response.json()["object"] == "chat.completion"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "seed",
    "user",
    "metadata",
    "response_format",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "parallel_tool_calls",
]
BASE: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]


@st.composite
def chat_bodies(draw: st.DrawFn) -> Any:
    """A valid chat request with some fields (top level, or of its message) given any JSON value."""
    body: dict[str, Any] = dict(BASE)
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[field] = draw(json_values)
    if draw(st.booleans()):
        message: dict[str, Any] = {"role": "user", "content": "hi"}
        for field in draw(st.lists(st.sampled_from(MESSAGE_FIELDS), min_size=1, max_size=2)):
            message[field] = draw(json_values)
        body["messages"] = [message]
    return body


documents = st.one_of(chat_bodies(), json_values, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
payloads = st.one_of(
    documents.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 30_000).map(lambda n: b'{"model": "gpt-4o-mini", "messages": ' + b"[" * n),
    st.sampled_from([b"", b" ", b"null", b"\xff\xfe\x00", b'{"model": "gpt-4o-mini", "messages": "\\ud800"}']),
    st.just(b"x" * 70_000),  # over max_body_bytes
)
content_types = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(content=payloads, content_type=content_types)
@example(content=json.dumps(BASE).encode(), content_type="application/json")
@example(content=json.dumps({**BASE, "stream": True}).encode(), content_type="application/json")
def test_any_request_body_gets_a_2xx_or_an_openai_shaped_4xx(proxy: Proxy, content: bytes, content_type: str) -> None:
    check(proxy, content, content_type)


header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@FUZZ
@given(deadline=header_text, objective=header_text, stream=st.booleans())
@example(deadline="0.5", objective="cost", stream=False)
def test_any_deadline_or_objective_header_gets_a_2xx_or_an_openai_shaped_4xx(
    proxy: Proxy, deadline: str, objective: str, stream: bool
) -> None:
    extra = {"x-apikeyrouter-deadline": deadline, "x-apikeyrouter-objective": objective}
    try:
        short = float(deadline) < 1.0
    except ValueError:
        short = False
    check(proxy, json.dumps({**BASE, "stream": stream}).encode(), "application/json", extra, short=short)
