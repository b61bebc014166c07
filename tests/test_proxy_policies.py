"""The policy endpoints on a real proxy in front of a real router: validate then apply, 400 with every error."""

from __future__ import annotations

import httpx

from tests.proxy_fakes import ADMIN_TOKEN, CHAT, auth, running_proxy
from tests.routing_env import routing_env

KEYS = [
    ("eu-1", "sk-sim-eu1", {"metadata": {"region": "eu"}}),
    ("us-1", "sk-sim-us1", {"metadata": {"region": "us"}}),
]
EU_ONLY = {
    "id": "eu-only",
    "scope": "global",
    "kind": "eligibility",
    "effect": {"require_key_metadata": {"region": "eu"}},
}
ADMIN = auth(ADMIN_TOKEN)


async def test_policies_are_listed_added_dry_run_and_deleted_over_http() -> None:
    async with (
        routing_env(KEYS) as env,
        running_proxy(env.router) as proxy,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=proxy.url) as http,
    ):
        assert (await http.get("/policies", headers=ADMIN)).json()["data"] == []
        assert (await http.get("/policies")).status_code == 401

        dry = await http.post(
            "/policies/dry-run",
            json={"policies": [EU_ONLY], "requests": [{**CHAT, "client": "acme"}] * 4},
            headers=ADMIN,
        )
        assert dry.status_code == 200, dry.text
        report = dry.json()
        assert report["requests"] == 4 and report["refused_total"] == 0 and report["cost_delta"] is not None
        assert (await http.get("/policies", headers=ADMIN)).json()["data"] == []  # a dry run applies nothing

        bad = await http.post(
            "/policies",
            json={
                "policies": [
                    EU_ONLY,
                    {**EU_ONLY, "kind": "cost"},
                    {"id": "x", "scope": "global", "kind": "routing", "effect": {"objectiv": "cost"}},
                ]
            },
            headers=ADMIN,
        )
        assert bad.status_code == 400
        message = bad.json()["error"]["message"]
        assert "policies[1].id: duplicate policy id 'eu-only'" in message
        assert "policies[1].effect.require_key_metadata: not an effect of a cost policy" in message
        assert "policies[2].effect: extra fields found (objectiv); did you mean 'objective'?" in message
        assert (await http.get("/policies", headers=ADMIN)).json()["data"] == []  # all or nothing

        added = await http.post("/policies", json=EU_ONLY, headers=ADMIN)
        assert added.status_code == 200 and [p["id"] for p in added.json()["data"]] == ["eu-only"]
        for _ in range(5):
            served = await http.post("/v1/chat/completions", json=CHAT, headers=auth())
            assert served.headers["x-apikeyrouter-key-id"] == "eu-1"

        audit = (await http.get("/policies/audit", headers=ADMIN)).json()["data"]
        assert [(a["action"], a["policy"]) for a in audit] == [("configure", "eu-only")]
        assert audit[0]["who"].startswith("admin:") and ADMIN_TOKEN not in str(audit)

        assert (await http.delete("/policies/eu-only", headers=ADMIN)).json() == {"id": "eu-only", "deleted": True}
        assert (await http.delete("/policies/eu-only", headers=ADMIN)).status_code == 404
