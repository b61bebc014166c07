"""`apikeyrouter serve` as a real process: the openai SDK through it, signals, reloads, disconnects."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.serve_env import ADMIN, CLIENT, Served, router_toml, serve_env

PREMIUM = 'metadata = { quality = "premium" }'


async def test_openai_sdk_through_serve_with_failover_auth_and_503(tmp_path: Path) -> None:
    async with serve_env(
        tmp_path,
        [("bad", "K_BAD", PREMIUM), ("good", "K_GOOD", "")],
        secrets={"K_BAD": "sk-sim-invalid", "K_GOOD": "sk-sim-good"},
        sim_keys=[{"key": "sk-sim-invalid", "behavior": "invalid"}, {"key": "sk-sim-good", "rpm": 3, "window_s": 30}],
    ) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT, max_retries=0)

        def chat() -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        raw = await trio.to_thread.run_sync(
            lambda: client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        )
        assert raw.headers["x-apikeyrouter-key-id"] == "good"
        assert raw.headers["x-apikeyrouter-attempts"] == "2"  # the invalid key was tried first, once
        assert raw.headers["x-apikeyrouter-decision-id"]
        assert raw.parse().choices[0].message.content

        def stream() -> list[str]:
            chunks = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "stream"}], stream=True
            )
            return [c.choices[0].delta.content or "" for c in chunks if c.choices]

        pieces = await trio.to_thread.run_sync(stream)
        assert len(pieces) > 3 and "".join(pieces).strip()

        anonymous = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as auth:
            await trio.to_thread.run_sync(
                lambda: anonymous.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
            )
        assert auth.value.status_code == 401

        with pytest.raises(openai.NotFoundError):
            await trio.to_thread.run_sync(
                lambda: client.chat.completions.create(
                    model="no-such-model", messages=[{"role": "user", "content": "x"}]
                )
            )

        await trio.to_thread.run_sync(chat)  # good's third request in its window: now 0 remaining
        with pytest.raises(openai.APIStatusError) as unavailable:
            await trio.to_thread.run_sync(chat)
        assert unavailable.value.status_code in (429, 503)
        retry_after = int(unavailable.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 31
        assert served.sim.stats("sk-sim-invalid").requests == 1
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{served.url}/metrics")).text
        assert 'apikeyrouter_attempt_failures_total{failure_class="auth_invalid",key="bad"} 1.0' in metrics


async def test_client_disconnect_cancels_the_upstream_call(tmp_path: Path) -> None:
    async with serve_env(
        tmp_path,
        [("slow", "K_SLOW", "")],
        secrets={"K_SLOW": "sk-sim-slow"},
        sim_keys=[{"key": "sk-sim-slow", "latency_ms": 5000}],
    ) as served:
        async with httpx.AsyncClient(timeout=10) as http, trio.open_nursery() as nursery:

            async def call() -> None:
                await http.post(
                    f"{served.url}/v1/chat/completions",
                    headers=served.client_headers,
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]},
                )

            nursery.start_soon(call)
            with trio.fail_after(5):  # the request has reached the simulator...
                await served.sim.wait_for(lambda sim: sim.stats("sk-sim-slow").requests == 1)
            nursery.cancel_scope.cancel()  # ...and now the client goes away
        with trio.fail_after(5):
            await served.sim.wait_for(lambda sim: sim.stats("sk-sim-slow").disconnects == 1)
        async with httpx.AsyncClient() as http:
            with trio.fail_after(5):
                while True:
                    keys = (await http.get(f"{served.url}/keys", headers=served.admin_headers)).json()
                    entries = keys["data"] if isinstance(keys, dict) else keys
                    if entries[0]["in_flight"] == 0:
                        break
                    await trio.sleep(0.05)
        assert served.sim.stats("sk-sim-slow").completed == 0


async def test_sigterm_lets_a_stream_finish_then_exits_zero(tmp_path: Path) -> None:
    async with serve_env(
        tmp_path,
        [("k", "K_1", "")],
        secrets={"K_1": "sk-sim-1"},
        sim_keys=[{"key": "sk-sim-1", "chunk_delay_ms": 60}],
    ) as served:
        lines: list[str] = []
        try:
            await _stream_through_sigterm(served, lines)
        except httpx.HTTPError as exc:
            raise AssertionError(f"stream cut: {exc}; serve log:\n{served.stderr.decode()[-6000:]}") from exc
        async with httpx.AsyncClient(timeout=2) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get(f"{served.url}/health")  # a new connection: no longer accepted
        assert lines[-1] == "data: [DONE]"
        errors = [line for line in lines if '"error"' in line]
        assert not errors, errors
        with trio.fail_after(10):
            code = await served.process.wait()
        assert code == 0
        log = served.stderr.decode()
        assert "shutdown_requested" in log and '"stopped"' in log


async def test_sighup_adds_and_removes_keys_and_rejects_a_bad_config(tmp_path: Path) -> None:
    async with serve_env(
        tmp_path,
        [("one", "K_1", ""), ("two", "K_2", "")],
        secrets={"K_1": "sk-sim-1", "K_2": "sk-sim-2", "K_3": "sk-sim-3"},
    ) as served:
        async with httpx.AsyncClient() as http:

            async def key_ids() -> list[str]:
                got = (await http.get(f"{served.url}/keys", headers=served.admin_headers)).json()
                entries = got["data"] if isinstance(got, dict) else got
                return sorted(k["id"] for k in entries)

            assert await key_ids() == ["one", "two"]
            served.config_path.write_text(router_toml(served.sim_url, [("two", "K_2", ""), ("three", "K_3", "")]))
            served.signal(signal.SIGHUP)
            with trio.fail_after(5):
                while await key_ids() != ["three", "two"]:
                    await trio.sleep(0.05)
            response = await http.post(
                f"{served.url}/v1/chat/completions",
                headers=served.client_headers,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after reload"}]},
            )
            assert response.status_code == 200
            assert response.headers["x-apikeyrouter-key-id"] in {"two", "three"}

            served.config_path.write_text(router_toml(served.sim_url, [("two", "K_2", "rmp = 5")]))
            served.signal(signal.SIGHUP)
            with trio.fail_after(5):
                while b"reload_rejected" not in served.stderr:
                    await trio.sleep(0.05)
            assert await key_ids() == ["three", "two"]  # the old config keeps running
            rejected = [json.loads(line) for line in served.stderr.decode().splitlines() if "reload_rejected" in line]
            assert any("rmp" in err for err in rejected[0]["errors"])
        assert ADMIN not in served.stderr.decode() and "sk-sim-" not in served.stderr.decode()


async def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    async with serve_env(
        tmp_path,
        [("k", "K_1", "")],
        secrets={"K_1": "sk-sim-1"},
        sim_keys=[{"key": "sk-sim-1", "chunk_delay_ms": 1000}],  # a stream that would outlast the grace
    ) as served:
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
            async with http.stream(
                "POST", f"{served.url}/v1/chat/completions", headers=served.client_headers, json=body
            ) as response:
                # A 504 here would leave nothing in flight: the first signal would end the process at once.
                assert response.status_code == 200, served.stderr.decode()[-3000:]
                lines = response.aiter_lines()
                await lines.__anext__()  # the stream is open (kept open: not closing the iterator)
                served.signal(signal.SIGTERM)
                await trio.sleep(0.3)
                assert served.process.returncode is None, served.stderr.decode()[-3000:]  # draining
                served.signal(signal.SIGTERM)
                with trio.fail_after(2):
                    code = await served.process.wait()
        assert code == 1
        assert "shutdown_forced" in served.stderr.decode()


async def _stream_through_sigterm(served: Served, lines: list[str]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "long"}]}
        async with http.stream(
            "POST", f"{served.url}/v1/chat/completions", headers=served.client_headers, json=body
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line:
                    continue  # the blank line between events
                lines.append(line)
                if len(lines) == 2:
                    served.signal(signal.SIGTERM)  # mid-stream, once (a second one would force an exit)


async def test_the_connection_limits_of_server_come_from_the_config(tmp_path: Path) -> None:
    limits = "max_header_bytes = 2048\nkeep_alive_timeout = 0.5"
    async with serve_env(tmp_path, [("k", "K_1", "")], secrets={"K_1": "sk-sim-1"}, server=limits) as served:
        host, port = served.url.removeprefix("http://").split(":")
        # A 3 KB head: within the default 16 KB, over this config's 2 KB.
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 3000 + b"\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 ")
        # An idle keep-alive connection is closed after this config's 0.5 s, not the default 75 s.
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"}")  # then the server closed it
