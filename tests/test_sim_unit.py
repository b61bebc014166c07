"""The simulator's logic without sockets: config, windows, decisions, at explicit times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apikeyrouter.adapters import count_text, parse_anthropic_headers, parse_openai_headers
from apikeyrouter.errors import ConfigError
from apikeyrouter.sim import SimConfig, SimProvider, load_sim_config, parse_sim_config
from apikeyrouter.sim.limits import SlidingWindow
from apikeyrouter.sim.provider import Fault, Reply, format_duration

ISSUE_EXAMPLE = """
[defaults]
rpm = 600            # requests per minute per key
tpm = 1000000        # tokens per minute per key
latency_ms = 0
[[keys]]
key = "sk-sim-tight"
rpm = 3
[[keys]]
key = "sk-sim-invalid"
behavior = "invalid"
[[keys]]
key = "sk-sim-exhausted"
behavior = "exhausted"
[[keys]]
key = "sk-sim-flaky"
error_rate = 0.5
"""


def test_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(ISSUE_EXAMPLE)
    cfg = load_sim_config(path)
    assert cfg.behavior_for("sk-sim-tight").rpm == 3
    assert cfg.behavior_for("sk-sim-tight").tpm == 1_000_000  # inherited from [defaults]
    assert cfg.behavior_for("sk-sim-invalid").behavior == "invalid"
    assert cfg.behavior_for("sk-sim-flaky").error_rate == 0.5
    assert cfg.behavior_for("anyone-else") == cfg.defaults


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"defaults": {"rmp": 3}}, r"extra fields found \(rmp\) @ sim.defaults"),
        ({"keys": [{"key": "a"}, {"key": "b", "latency": 3}]}, r"extra fields found \(latency\) @ sim.keys\[1\]"),
        ({"keys": [{"rpm": 3}]}, r"needs a non-empty string `key` @ sim.keys\[0\].key"),
        ({"keys": [{"key": "a", "behavior": "angry"}]}, r"expected one of ok, invalid, exhausted.*sim.keys\[0\]"),
        ({"defaults": {"rpm": "600"}}, r"non-negative integer.*sim.defaults.rpm"),
        ({"defaults": {"rpm": True}}, r"non-negative integer.*sim.defaults.rpm"),
        ({"defaults": {"error_rate": 1.5}}, r"between 0 and 1.*sim.defaults.error_rate"),
        ({"defaults": {"error_rate": 0.6, "reset_rate": 0.6}}, r"add up to at most 1"),
        ({"keys": [{"key": "a"}, {"key": "a"}]}, r"duplicate key entry @ sim.keys\[1\].key"),
        ({"server": {}}, r"extra fields found \(server\) @ sim"),
    ],
)
def test_strict_loader(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_sim_config(raw)


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text("[defaults\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_sim_config(path)


def test_sliding_window_is_exact() -> None:
    w = SlidingWindow(limit=3, period=60.0)
    for t in (0.0, 10.0, 20.0):
        assert w.fits(1, t)
        w.add(1, t)
    assert not w.fits(1, 30.0)
    assert w.wait(1, 30.0) == 30.0  # the entry at t=0 expires at 60
    assert w.full_reset(30.0) == 50.0  # the newest (t=20) expires at 80
    assert w.remaining(59.999) == 0 and w.remaining(60.0) == 1
    assert w.fits(1, 60.0)
    assert w.wait(4, 60.0) is None  # can never fit


def test_token_window_waits_for_enough_to_free() -> None:
    w = SlidingWindow(limit=100, period=10.0)
    w.add(30, 0.0)
    w.add(30, 1.0)
    w.add(30, 2.0)
    assert w.wait(10, 3.0) == 0.0
    assert w.wait(40, 3.0) == 7.0  # 30 must free: the t=0 entry goes at 10
    assert w.wait(70, 3.0) == 8.0  # 60 must free: t=0 and t=1 entries, the later at 11
    assert w.wait(71, 3.0) == 9.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (0.0, "0ms"), (1.0, "1s"), (360.0, "6m0s"), (3723.5, "1h2m3.5s"), (59.9996, "1m0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chat(provider: SimProvider, key: str, *, anthropic: bool = False, **body: object) -> Reply:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], **body}
    if anthropic:
        payload.setdefault("max_tokens", 100)
        return provider.handle("POST", "/v1/messages", {"x-api-key": key}, json.dumps(payload).encode())
    return provider.handle(
        "POST", "/v1/chat/completions", {"authorization": f"Bearer {key}"}, json.dumps(payload).encode()
    )


def headers_of(reply: Reply) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in reply.headers}


def test_rate_limit_with_virtual_time() -> None:
    clock = FakeClock()
    sim = SimProvider(parse_sim_config({"keys": [{"key": "k", "rpm": 2, "window_s": 10}]}), clock=clock)
    first = chat(sim, "k")
    assert first.status == 200
    h = headers_of(first)
    # 2 per 10 s window, reported per minute like the real providers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("12", "1")
    assert h["x-ratelimit-reset-requests"] == "10s"
    clock.now += 4
    assert chat(sim, "k").status == 200
    clock.now += 1
    limited = chat(sim, "k")
    assert limited.status == 429
    h = headers_of(limited)
    assert h["retry-after"] == "5" and h["retry-after-ms"] == "5000"  # first request expires at +10
    assert parse_openai_headers(h).remaining_requests == 0
    body = json.loads(limited.body)
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    clock.now += 5
    assert chat(sim, "k").status == 200
    assert sim.stats("k").rate_limited == 1 and sim.stats("k").requests == 4


def test_tokens_per_minute() -> None:
    clock = FakeClock()
    sim = SimProvider(parse_sim_config({"keys": [{"key": "k", "tpm": 50}]}), clock=clock)
    ok = chat(sim, "k", max_tokens=10)
    used = json.loads(ok.body)["usage"]["total_tokens"]
    assert int(headers_of(ok)["x-ratelimit-remaining-tokens"]) == 50 - used
    while True:
        r = chat(sim, "k", max_tokens=10)
        if r.status == 429:
            break
    assert json.loads(r.body)["error"]["type"] == "tokens"


def test_answers_are_deterministic_and_token_exact() -> None:
    sim = SimProvider(SimConfig(), clock=FakeClock())
    a = json.loads(chat(sim, "k1").body)
    b = json.loads(chat(sim, "k2").body)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    text = a["choices"][0]["message"]["content"]
    assert a["usage"]["completion_tokens"] == count_text(text, "o200k_base") == count_text(text, "cl100k_base")
    other = json.loads(chat(sim, "k1", messages=[{"role": "user", "content": "different"}]).body)
    assert other["choices"][0]["message"]["content"] != text
    capped = json.loads(chat(sim, "k1", max_tokens=2).body)
    assert capped["usage"]["completion_tokens"] == 2 and capped["choices"][0]["finish_reason"] == "length"


def test_behaviours_and_provider_error_bodies() -> None:
    cfg = parse_sim_config(
        {"keys": [{"key": "sk-sim-invalid-0001", "behavior": "invalid"}, {"key": "x", "behavior": "exhausted"}]}
    )
    sim = SimProvider(cfg, clock=FakeClock())
    r = chat(sim, "sk-sim-invalid-0001")
    assert r.status == 401 and json.loads(r.body)["error"]["code"] == "invalid_api_key"
    assert "sk-sim-invalid-0001" not in r.body.decode()  # masked, as OpenAI does
    r = chat(sim, "sk-sim-invalid-0001", anthropic=True)
    assert r.status == 401 and json.loads(r.body)["error"]["type"] == "authentication_error"
    r = chat(sim, "x")
    assert r.status == 429 and json.loads(r.body)["error"]["code"] == "insufficient_quota"
    r = chat(sim, "x", anthropic=True)
    assert r.status == 400 and "credit balance is too low" in json.loads(r.body)["error"]["message"]
    r = sim.handle("POST", "/v1/chat/completions", {}, b"{}")
    assert r.status == 401
    r = sim.handle("POST", "/v1/messages", {"x-api-key": "k"}, b"{not json")
    assert r.status == 400 and json.loads(r.body)["type"] == "error"
    assert sim.handle("GET", "/nope", {}, b"").status == 404


def test_fault_rates_are_seeded() -> None:
    def run() -> list[str]:
        cfg = parse_sim_config({"defaults": {"error_rate": 0.3, "timeout_rate": 0.2, "reset_rate": 0.1, "seed": 7}})
        sim = SimProvider(cfg, clock=FakeClock())
        out = []
        for _ in range(200):
            r = chat(sim, "k")
            out.append(r.fault.value if r.fault is not Fault.NONE else str(r.status))
        return out

    first = run()
    assert first == run()
    assert 40 <= sum(o in ("500", "503") for o in first) <= 80
    assert 20 <= first.count("hang") <= 60 and 5 <= first.count("reset") <= 35


def test_anthropic_stream_event_sequence() -> None:
    sim = SimProvider(SimConfig(), clock=FakeClock())
    reply = chat(sim, "k", anthropic=True, stream=True, model="claude-haiku-4-5")
    assert reply.events is not None
    names = [e.split(b"\n", 1)[0].decode() for e in reply.events]
    n = len(names)
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert names[3 : n - 3] == ["event: content_block_delta"] * (n - 6)
    assert names[n - 3 :] == ["event: content_block_stop", "event: message_delta", "event: message_stop"]
    h = headers_of(reply)
    assert h["content-type"].startswith("text/event-stream")
    assert parse_anthropic_headers(h).remaining_requests == 599


def test_openai_stream_usage_only_when_asked() -> None:
    sim = SimProvider(SimConfig(), clock=FakeClock())
    plain = chat(sim, "k", stream=True)
    with_usage = chat(sim, "k", stream=True, stream_options={"include_usage": True})
    assert plain.events is not None and with_usage.events is not None
    assert plain.events[-1] == with_usage.events[-1] == b"data: [DONE]\n\n"
    assert b'"usage"' not in b"".join(plain.events)
    assert json.loads(with_usage.events[-2][6:])["choices"] == []
