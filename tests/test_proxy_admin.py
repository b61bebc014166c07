"""The management API and /metrics: admin auth, key operations, and key material never coming back out."""

from __future__ import annotations

import httpx
import structlog.testing
import trio
import trio.testing

from tests.proxy_fakes import ADMIN_TOKEN, CHAT, CLIENT_TOKEN, FakeRouter, auth, running_proxy
from tests.test_proxy_http import assert_openai_error

ADMIN = auth(ADMIN_TOKEN)
MARKER = "SECRET-MARKER-7f3a9c"
SECRET = f"sk-live-{MARKER}-0123456789"


async def test_management_is_disabled_without_an_admin_token() -> None:
    async with (
        running_proxy(FakeRouter(), admin=False) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        for method, path in [("GET", "/state"), ("GET", "/keys"), ("POST", "/keys"), ("GET", "/decisions/d-1")]:
            response = await http.request(method, path, headers=ADMIN)
            error = assert_openai_error(response, 403, "admin_disabled")
            assert "no admin token is configured" in error["message"]


async def test_state_needs_the_admin_token() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        anonymous = await http.get("/state")
        client = await http.get("/state", headers=auth(CLIENT_TOKEN))
        admin = await http.get("/state", headers=ADMIN)
    assert_openai_error(anonymous, 401, "invalid_admin_token")
    assert_openai_error(client, 401, "invalid_admin_token")
    assert admin.status_code == 200
    assert admin.json()["tree"]["name"] == "root"


async def test_key_lifecycle_through_the_api() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        created = await http.post(
            "/keys",
            headers=ADMIN,
            json={
                "id": "oa-9",
                "provider": "openai",
                "secret": SECRET,
                "metadata": {"tier": "free"},
                "limits": {"rpm": 60},
                "models": ["gpt-4o-mini"],
            },
        )
        listed = await http.get("/keys", headers=ADMIN)
        one = await http.get("/keys/oa-9", headers=ADMIN)
        rotated = await http.post("/keys/oa-9/rotate", headers=ADMIN, json={"secret": "sk-live-another-secret-999"})
        disabled = await http.post("/keys/oa-9/state", headers=ADMIN, json={"state": "disabled", "reason": "audit"})
        enabled = await http.post("/keys/oa-9/state", headers=ADMIN, json={"state": "active"})
        bogus = await http.post("/keys/oa-9/state", headers=ADMIN, json={"state": "invalid"})
        revoked = await http.delete("/keys/oa-9", headers=ADMIN)
    assert created.status_code == 201
    assert set(created.json()) == {"id", "provider", "fingerprint", "metadata"}
    assert created.json()["metadata"] == {"tier": "free"}
    assert created.json()["fingerprint"].startswith("fp:")
    assert router.key("oa-9") is not None
    assert [k["id"] for k in listed.json()["data"]] == ["oa-9"]
    assert one.json()["limits"] == {"rpm": 60}
    assert rotated.json()["fingerprint"] != created.json()["fingerprint"]
    assert disabled.json()["lifecycle"] == "disabled"
    assert enabled.json()["lifecycle"] == "active"
    assert assert_openai_error(bogus, 400)["param"] == "state"
    assert revoked.json()["lifecycle"] == "revoked"


async def test_key_registration_is_validated_strictly() -> None:
    cases = [
        ({"provider": "openai", "secret": "s", "rmp": 5}, "rmp"),
        ({"provider": "openai", "secret": "s", "limits": {"rpm": "80"}}, "limits"),
        ({"provider": "openai", "secret": "s", "limits": {"rpm": True}}, "limits"),
        ({"provider": "openai", "secret": ""}, "secret"),
        ({"secret": "s"}, "provider"),
        ({"provider": "nowhere", "secret": "s"}, "provider"),
        ({"provider": "openai", "secret": "s", "models": "gpt-4o"}, "models"),
    ]
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        for body, param in cases:
            error = assert_openai_error(await http.post("/keys", headers=ADMIN, json=body), 400)
            assert error["param"] == param, body


async def test_decisions_by_id() -> None:
    async with running_proxy(FakeRouter()) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        found = await http.get("/decisions/d-1", headers=ADMIN)
        recent = await http.get("/decisions", headers=ADMIN)
    assert found.json()["chosen"] == "oa-1"
    assert [d["id"] for d in recent.json()["data"]] == ["d-1"]


async def test_no_endpoint_and_no_log_ever_shows_key_material() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        with structlog.testing.capture_logs() as logs:
            created = await http.post("/keys", headers=ADMIN, json={"provider": "openai", "secret": SECRET})
            key_id = created.json()["id"]
            outputs = [created.text]
            for method, path, headers in [
                ("GET", "/state", ADMIN),
                ("GET", "/keys", ADMIN),
                ("GET", f"/keys/{key_id}", ADMIN),
                ("GET", "/decisions", ADMIN),
                ("GET", "/decisions/d-1", ADMIN),
                ("GET", "/metrics", {}),
                ("GET", "/health", {}),
                ("GET", "/health/ready", {}),
                ("GET", "/v1/models", auth()),
            ]:
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 200, path
                outputs.append(response.text)
                outputs.append(str(response.headers))
            chat = await http.post("/v1/chat/completions", headers=auth(), json=CHAT)
            outputs += [chat.text, str(chat.headers)]
            rotated = await http.post(f"/keys/{key_id}/rotate", headers=ADMIN, json={"secret": SECRET + "-v2"})
            outputs.append(rotated.text)
            await trio.testing.wait_all_tasks_blocked()
    everything = "\n".join(outputs) + repr(logs)
    assert key_id in everything  # the output is there to search...
    assert MARKER not in everything  # ...and the key material is not in it
    assert CLIENT_TOKEN not in everything and ADMIN_TOKEN not in everything


async def test_metrics_expose_requests_attempts_latency_in_flight_and_key_states() -> None:
    router = FakeRouter()
    async with running_proxy(router) as proxy, httpx.AsyncClient(base_url=proxy.url) as http:
        await http.post("/keys", headers=ADMIN, json={"id": "oa-1", "provider": "openai", "secret": SECRET})
        await http.post("/v1/chat/completions", headers=auth(), json=CHAT)
        await http.post("/v1/chat/completions", json=CHAT)
        await trio.testing.wait_all_tasks_blocked()
        response = await http.get("/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    expected = [
        'apikeyrouter_http_requests_total{route="/v1/chat/completions",status="200"} 1.0',
        'apikeyrouter_http_requests_total{route="/v1/chat/completions",status="401"} 1.0',
        'apikeyrouter_http_requests_total{route="/keys",status="201"} 1.0',
        'apikeyrouter_http_request_duration_seconds_count{route="/v1/chat/completions"} 2.0',
        "apikeyrouter_http_requests_in_flight 0.0",
        "apikeyrouter_upstream_attempts_total 1.0",
        'apikeyrouter_requests_served_total{key="oa-1",provider="openai"} 1.0',
        'apikeyrouter_key_lifecycle{key="oa-1",provider="openai",state="active"} 1.0',
        'apikeyrouter_key_lifecycle{key="oa-1",provider="openai",state="throttled"} 0.0',
        'apikeyrouter_key_breaker{key="oa-1",provider="openai",state="closed"} 1.0',
        'apikeyrouter_key_capacity{key="oa-1",provider="openai",state="abundant"} 1.0',
        'apikeyrouter_key_capacity_left_ratio{key="oa-1",provider="openai"} 1.0',
        'apikeyrouter_key_latency_seconds{key="oa-1",provider="openai"} 0.12',
    ]
    for line in expected:
        assert line in text, line


async def test_metrics_can_require_the_admin_token() -> None:
    async with (
        running_proxy(FakeRouter(), metrics_require_admin=True) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        assert_openai_error(await http.get("/metrics"), 401, "invalid_admin_token")
        assert (await http.get("/metrics", headers=ADMIN)).status_code == 200
