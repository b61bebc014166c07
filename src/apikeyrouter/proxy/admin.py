"""The management API: state, keys, decisions. Every route here needs the admin token.

Bodies are validated strictly (unknown fields are refused, ints are ints) so a typo never silently
registers a key with the wrong limits. Key material goes in (`POST /keys`, `rotate`) and never comes out:
answers are built from `APIKey` and the router's key entries, which carry a fingerprint only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apikeyrouter.proxy._http import HTTPError
from apikeyrouter.runtime.api import APIKey, RouterAPI
from apikeyrouter.runtime.views import tree_to_json
from apikeyrouter.secret import secret_problem

__all__ = ["AdminAPI"]

_KEY_FIELDS = frozenset({"id", "provider", "secret", "metadata", "limits", "models", "max_in_flight"})
_KEY_STATES = ("active", "disabled")


def _object(body: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise HTTPError(400, f"{where}: the body must be a JSON object")
    extra = sorted(set(body) - allowed)
    if extra:
        raise HTTPError(
            400, f"{where}: unknown fields ({', '.join(extra)}); allowed: {', '.join(sorted(allowed))}", param=extra[0]
        )
    return body


def _string(body: Mapping[str, Any], field: str, *, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"'{field}' is required and must be a non-empty string", param=field)
    return value


def _secret(body: Mapping[str, Any]) -> str:
    """The key material in `secret`, refused (400, `param: "secret"`) unless a header can carry it."""
    value = _string(body, "secret", required=True)
    assert value is not None
    if (problem := secret_problem(value)) is not None:
        raise HTTPError(400, f"'secret' {problem}", param="secret")
    return value


def _str_map(body: Mapping[str, Any], field: str) -> dict[str, str] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise HTTPError(400, f"'{field}' must be an object of string values", param=field)
    return dict(value)


def _int_map(body: Mapping[str, Any], field: str) -> dict[str, int] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in value.items()
    ):
        raise HTTPError(
            400, f"'{field}' must be an object of non-negative integers (e.g. {{\"rpm\": 500}})", param=field
        )
    return dict(value)


def _positive_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise HTTPError(400, f"'{field}' must be a positive integer", param=field)
    return value


def _str_list(body: Mapping[str, Any], field: str) -> list[str] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise HTTPError(400, f"'{field}' must be an array of non-empty strings", param=field)
    return list(value)


def key_json(key: APIKey) -> dict[str, Any]:
    return {"id": key.id, "provider": key.provider, "fingerprint": key.fingerprint, "metadata": dict(key.metadata)}


class AdminAPI:
    """Handlers return (status, JSON value); the app authenticates, parses bodies and sends."""

    def __init__(self, router: RouterAPI) -> None:
        self.router = router

    def state(self) -> tuple[int, Any]:
        summary = self.router.get_state_summary()
        if "tree" not in summary:
            summary = {**summary, "tree": tree_to_json(self.router.tree())}
        return 200, summary

    def list_keys(self) -> tuple[int, Any]:
        return 200, {"object": "list", "data": self.router.keys()}

    def get_key(self, key_id: str) -> tuple[int, Any]:
        entry = self.router.key(key_id)
        if entry is None:
            raise HTTPError(404, f"no key with id '{key_id}'", type="not_found_error", code="key_not_found")
        return 200, entry

    async def add_key(self, body: Any) -> tuple[int, Any]:
        fields = _object(body, _KEY_FIELDS, "POST /keys")
        provider = _string(fields, "provider", required=True)
        secret = _secret(fields)
        assert provider is not None
        key = await self.router.register_key(
            secret,
            provider,
            _str_map(fields, "metadata"),
            key_id=_string(fields, "id", required=False),
            limits=_int_map(fields, "limits"),
            models=_str_list(fields, "models"),
            max_in_flight=_positive_int(fields, "max_in_flight"),
        )
        return 201, key_json(key)

    async def revoke_key(self, key_id: str, body: Any) -> tuple[int, Any]:
        reason = "revoked by operator (DELETE /keys)"
        if body is not None:
            fields = _object(body, frozenset({"reason"}), f"DELETE /keys/{key_id}")
            reason = _string(fields, "reason", required=False) or reason
        await self.router.revoke_key(key_id, reason)
        return 200, self.router.key(key_id) or {"id": key_id, "lifecycle": "revoked"}

    async def rotate_key(self, key_id: str, body: Any) -> tuple[int, Any]:
        fields = _object(body, frozenset({"secret"}), f"POST /keys/{key_id}/rotate")
        secret = _secret(fields)
        await self.router.rotate_key(key_id, secret)
        return 200, self.router.key(key_id) or {"id": key_id}

    async def set_key_state(self, key_id: str, body: Any) -> tuple[int, Any]:
        fields = _object(body, frozenset({"state", "reason"}), f"POST /keys/{key_id}/state")
        state = fields.get("state")
        if state not in _KEY_STATES:
            raise HTTPError(400, f"'state' must be one of {', '.join(_KEY_STATES)}", param="state")
        reason = _string(fields, "reason", required=False) or f"set {state} by operator"
        await self.router.update_key_state(key_id, state, reason)
        return 200, self.router.key(key_id) or {"id": key_id, "lifecycle": state}

    async def list_budgets(self) -> tuple[int, Any]:
        """Every budget with its limit, spent and reserved money (strings, exact decimals); with several
        instances on Redis, what they spent together."""
        budgets = await self.router.shared_budgets()
        return 200, {"object": "list", "data": [{"id": bid, **budgets[bid]} for bid in sorted(budgets)]}

    def list_decisions(self, limit: int) -> tuple[int, Any]:
        return 200, {"object": "list", "data": self.router.decisions(limit)}

    def get_decision(self, decision_id: str) -> tuple[int, Any]:
        decision = self.router.decision(decision_id)
        if decision is None:
            raise HTTPError(
                404,
                f"no decision with id '{decision_id}' (decisions are kept for a bounded time)",
                type="not_found_error",
                code="decision_not_found",
            )
        return 200, decision
