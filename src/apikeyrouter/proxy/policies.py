"""The policy endpoints: `GET /policies`, `POST /policies`, `DELETE /policies/{id}`, `POST /policies/dry-run`,
`GET /policies/audit`. Every route here needs the admin token; the handlers in app.py are one line each.

`POST /policies` takes one policy (a table like `[[policies]]`) or `{"policies": [...]}`, which replaces the
whole set; either is validated with the rest of the live set and applied at once, or refused with a 400
listing every error (`policies[3].match.models: unknown model 'gpt-5o'`), nothing changed. Changes are
audited under the admin token's fingerprint (never the token).

`own_policy` reads a request's own policy from its `x-apikeyrouter-policy` header (any client may send
one: it can only narrow or steer its own request, never change what others get).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
import trio

from apikeyrouter.adapters.tokens import loaded_encodings
from apikeyrouter.adapters.tokens import warm as warm_tokenizers
from apikeyrouter.domain.policy import Policy
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.proxy._http import HTTPError

__all__ = ["PolicyAPI", "PolicyRouter", "own_policy"]

_HEADER = "x-apikeyrouter-policy"


def own_policy(router: object, raw: bytes) -> dict[str, Any]:
    """The `x-apikeyrouter-policy` header (one policy, or a list, as JSON; scope `request`) validated like
    any policy: `{"policy": (...)}` for the route call, or a 400 naming the field."""
    parse = getattr(router, "request_policies", None)
    if parse is None:
        raise HTTPError(400, f"this router takes no {_HEADER} header", param=_HEADER)
    try:
        given = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"{_HEADER} is not valid JSON: {exc}", param=_HEADER) from None
    if not isinstance(given, dict | list):
        raise HTTPError(400, f"{_HEADER}: expected a JSON object (a policy) or a list of them", param=_HEADER)
    return {"policy": parse(given, param=_HEADER)}


@runtime_checkable
class PolicyRouter(Protocol):
    def policies(self) -> list[dict[str, Any]]: ...

    def policy_audit(self, limit: int = 50) -> list[dict[str, Any]]: ...

    async def set_policies(self, policies: Sequence[Policy | Mapping[str, Any]], *, who: str = ...) -> None: ...

    async def configure_policy(self, policy: Policy | Mapping[str, Any], *, who: str = ...) -> None: ...

    async def remove_policy(self, policy_id: str, *, who: str = ...) -> bool: ...

    def dry_run_policy(
        self, policies: Sequence[Policy | Mapping[str, Any]], requests: Sequence[Any] | None = None
    ) -> dict[str, Any]: ...


def _rejected(exc: InvalidRequest) -> HTTPError:
    errors = list(getattr(exc, "errors", ()) or [str(exc)])
    return HTTPError(400, "invalid policies: " + "; ".join(errors), param="policies", code="invalid_policies")


class PolicyAPI:
    def __init__(self, router: PolicyRouter) -> None:
        self.router = router

    def list(self) -> tuple[int, Any]:
        return 200, {"object": "list", "data": self.router.policies()}

    def audit(self) -> tuple[int, Any]:
        return 200, {"object": "list", "data": self.router.policy_audit(200)}

    async def post(self, body: Any, who: str) -> tuple[int, Any]:
        if not isinstance(body, Mapping):
            raise HTTPError(400, 'the body must be a policy object or {"policies": [...]}', param="policies")
        try:
            if "policies" in body:
                items = body["policies"]
                if not isinstance(items, list):
                    raise HTTPError(400, "'policies' must be a list of policy objects", param="policies")
                await self.router.set_policies(items, who=who)
            else:
                await self.router.configure_policy(body, who=who)
        except InvalidRequest as exc:
            raise _rejected(exc) from None
        return 200, {"object": "list", "data": self.router.policies()}

    async def delete(self, policy_id: str, who: str) -> tuple[int, Any]:
        if not await self.router.remove_policy(policy_id, who=who):
            raise HTTPError(404, f"no policy with id '{policy_id}'", type="not_found_error", code="policy_not_found")
        return 200, {"id": policy_id, "deleted": True}

    async def dry_run(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, Mapping) or not isinstance(body.get("policies"), list):
            raise HTTPError(400, 'the body must be {"policies": [...], "requests": [...]?}', param="policies")
        requests = body.get("requests")
        if requests is not None and not isinstance(requests, list):
            raise HTTPError(400, "'requests' must be a list of requests", param="requests")
        if requests and not {"o200k_base", "cl100k_base"} <= loaded_encodings():
            # The replay counts the given requests' tokens: build the tables in a worker thread first, not
            # on the event loop (they load lazily; a cold one takes ~0.2 s).
            await trio.to_thread.run_sync(warm_tokenizers)
        try:
            return 200, self.router.dry_run_policy(body["policies"], requests)
        except InvalidRequest as exc:
            raise _rejected(exc) from None
