"""The proxy's HTTP contract on a real server: status codes, error shapes, auth, limits, deadlines, health."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
import structlog.testing
import trio
import trio.testing

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.errors import ConfigError, RouterNotRunning, UpstreamError
from apikeyrouter.proxy import ProxyApp, serve_proxy
from tests.proxy_fakes import ADMIN_TOKEN, CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


# (method, path, headers, body, status, code): every way a request can go wrong answers in the OpenAI shape.
ERRORS: list[tuple[str, str, dict[str, str], bytes | None, int, str | None]] = [
    ("POST", "/v1/chat/completions", {}, json.dumps(CHAT).encode(), 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", auth("nope"), json.dumps(CHAT).encode(), 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", {"Authorization": "Basic abc"}, b"{}", 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", auth(ADMIN_TOKEN), json.dumps(CHAT).encode(), 401, "invalid_api_key"),
    ("GET", "/v1/models", {}, None, 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", auth(), b"{not json", 400, None),
    ("POST", "/v1/chat/completions", auth(), b"", 400, None),
    ("POST", "/v1/chat/completions", auth(), b"[1, 2]", 400, None),
    ("POST", "/v1/chat/completions", auth(), b'{"messages": [{"role": "user", "content": "x"}]}', 400, None),
    ("POST", "/v1/chat/completions", auth(), json.dumps({**CHAT, "model": "gpt-9"}).encode(), 404, "model_not_found"),
    ("GET", "/v1/chat/completions", auth(), None, 405, "method_not_allowed"),
    ("GET", "/v2/whatever", auth(), None, 404, "not_found"),
    ("DELETE", "/health", {}, None, 405, "method_not_allowed"),
    ("GET", "/state", auth(), None, 401, "invalid_admin_token"),
    ("GET", "/keys", {}, None, 401, "invalid_admin_token"),
    ("GET", "/keys/unknown", auth(ADMIN_TOKEN), None, 404, "key_not_found"),
    ("POST", "/keys/unknown/state", auth(ADMIN_TOKEN), b'{"state": "disabled"}', 404, "key_not_found"),
    ("GET", "/decisions/unknown", auth(ADMIN_TOKEN), None, 404, "decision_not_found"),
    ("POST", "/keys", auth(ADMIN_TOKEN), b'{"provider": "openai"}', 400, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), ERRORS)
async def test_errors_have_the_openai_shape(
    method: str, path: str, headers: dict[str, str], body: bytes | None, status: int, code: str | None
) -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.request(method, path, headers=headers, content=body)
    assert_openai_error(response, status, code)
    assert response.headers["x-request-id"]


async def test_messages_name_the_problem() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        bad_json = await http.post("/v1/chat/completions", headers=auth(), content=b'{"model": ')
        no_model = await http.post("/v1/chat/completions", headers=auth(), json={"messages": CHAT["messages"]})
        no_auth = await http.post("/v1/chat/completions", json=CHAT)
        wrong_method = await http.put("/v1/chat/completions", headers=auth(), json=CHAT)
    assert "not valid JSON" in assert_openai_error(bad_json, 400)["message"]
    error = assert_openai_error(no_model, 400)
    assert error["param"] == "model" and "'model' is required" in error["message"]
    assert no_auth.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in assert_openai_error(no_auth, 401)["message"]
    assert wrong_method.headers["allow"] == "POST"


async def test_body_too_large_is_413() -> None:
    async with (
        running_proxy(FakeRouter(), max_body_bytes=1024) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        declared = await http.post("/v1/chat/completions", headers=auth(), json=big)

        async def chunked() -> Any:
            for _ in range(8):
                yield b" " * 512  # no Content-Length: caught while reading

        streamed = await http.post("/v1/chat/completions", headers=auth(), content=chunked())
    assert_openai_error(declared, 413, "request_too_large")
    assert_openai_error(streamed, 413, "request_too_large")


async def test_deadline_header_lowers_the_deadline_and_cancels_the_route() -> None:
    router = FakeRouter()
    router.route_delay = 30
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        start = trio.current_time()
        response = await http.post(
            "/v1/chat/completions", headers={**auth(), "x-apikeyrouter-deadline": "0.2"}, json=CHAT
        )
        took = trio.current_time() - start
        bad = await http.post("/v1/chat/completions", headers={**auth(), "x-apikeyrouter-deadline": "soon"}, json=CHAT)
    assert_openai_error(response, 504, "deadline_exceeded")
    assert 0.2 <= took < 2
    assert router.route_cancelled.is_set()
    assert assert_openai_error(bad, 400)["param"] == "x-apikeyrouter-deadline"


async def test_the_router_sees_the_request_deadline() -> None:
    router = FakeRouter()
    async with (
        running_proxy(router, request_deadline=7.0) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        before = trio.current_time()
        await http.post("/v1/chat/completions", headers=auth(), json=CHAT)
        await http.post("/v1/chat/completions", headers={**auth(), "x-apikeyrouter-deadline": "60"}, json=CHAT)
    assert before + 6 < router.deadlines[0] < before + 8
    assert router.deadlines[1] < before + 8  # the header may lower the deadline, never raise it


async def test_objective_header_reaches_the_router() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        await http.post("/v1/chat/completions", headers={**auth(), "x-apikeyrouter-objective": "cost"}, json=CHAT)
        await http.post("/v1/chat/completions", headers=auth(), json=CHAT)
    assert [call[1] for call in router.calls] == ["cost", None]


async def test_request_id_is_echoed_when_sane() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        mine = await http.post("/v1/chat/completions", headers={**auth(), "x-request-id": "req-42"}, json=CHAT)
        junk = await http.post("/v1/chat/completions", headers={**auth(), "x-request-id": "a b"}, json=CHAT)
    assert mine.headers["x-request-id"] == "req-42"
    assert mine.json()["id"] == "chatcmpl-upstream-1"
    assert junk.headers["x-request-id"] not in ("a b", "")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamError("boom", failure=FailureClass.SERVER_ERROR, status=500, provider="openai"), 502, "server_error"),
        (UpstreamError("slow", failure=FailureClass.TIMEOUT, provider="openai"), 504, "timeout"),
        (
            UpstreamError("Incorrect API key provided: sk-abcdef123456", failure=FailureClass.AUTH_INVALID, status=401),
            502,
            "auth_invalid",
        ),
        (RouterNotRunning(), 503, "router_unavailable"),
        (RuntimeError("sk-live-should-not-leak"), 500, None),
    ],
)
async def test_router_failures_map_to_gateway_statuses(error: Exception, status: int, code: str | None) -> None:
    router = FakeRouter()
    router.script = [error]
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        with structlog.testing.capture_logs():
            response = await http.post("/v1/chat/completions", headers=auth(), json=CHAT)
    assert_openai_error(response, status, code)
    assert "sk-" not in response.text


async def test_stream_open_failure_is_a_plain_error_response() -> None:
    router = FakeRouter()
    router.stream_open_error = UpstreamError(
        "Your input was flagged", failure=FailureClass.CONTENT_POLICY, status=400, error_type="invalid_request_error"
    )
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        response = await http.post("/v1/chat/completions", headers=auth(), json={**CHAT, "stream": True})
    error = assert_openai_error(response, 400, "content_policy_violation")
    assert error["message"] == "Your input was flagged"


async def test_health_and_readiness() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        live = await http.get("/health")
        ready = await http.get("/health/ready")
        router.is_ready = False
        not_ready = await http.get("/health/ready/")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert_openai_error(not_ready, 503, "not_ready")


async def test_open_inference_without_client_tokens() -> None:
    async with (
        running_proxy(FakeRouter(), open_inference=True) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


async def test_open_inference_refuses_a_public_bind() -> None:
    app = ProxyApp(FakeRouter())
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0"):
        await serve_proxy(app, "0.0.0.0", 0)


async def test_one_log_event_per_request_without_secrets() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        with structlog.testing.capture_logs() as logs:
            await http.post("/v1/chat/completions", headers={**auth(), "x-request-id": "r-1"}, json=CHAT)
            await http.get("/keys", headers=auth(ADMIN_TOKEN))
            await trio.testing.wait_all_tasks_blocked()  # the event is logged just after the answer is sent
    requests = [e for e in logs if e["event"] == "http_request"]
    assert len(requests) == 2
    chat = requests[0]
    assert chat["method"] == "POST" and chat["path"] == "/v1/chat/completions" and chat["status"] == 200
    assert chat["key_id"] == "oa-1" and chat["attempts"] == 1 and chat["request_id"] == "r-1"
    assert chat["latency_ms"] >= 0 and math.isfinite(chat["latency_ms"])
    text = repr(logs)
    assert CLIENT_TOKEN not in text and ADMIN_TOKEN not in text
