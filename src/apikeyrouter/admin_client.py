"""A blocking client of a running process's management API (docs/http-api.md), for the operator commands.

Every failure is an `AdminError` whose text is one line an operator can act on: nothing listening at the
URL (try `--url`), a missing or wrong admin token, or the API's own message for what it refused. Key
material goes out in request bodies only; nothing here puts it in a message, and the answers carry a
fingerprint, never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "URL_ENV", "AdminClient", "AdminError"]

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "APIKEYROUTER_URL"
TOKEN_ENV = "APIKEYROUTER_ADMIN_TOKEN"


class AdminError(Exception):
    """Why a management call failed, in one line (no secret in it)."""


def _api_message(response: httpx.Response) -> str:
    """The `error.message` of an error answer (both error shapes carry one), else the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return " ".join(message.split())
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


class AdminClient:
    """`with AdminClient(url, token) as admin: admin.keys()`: one connection pool for a command."""

    def __init__(self, url: str, token: str | None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._has_token = bool(token)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    # -- the calls ------------------------------------------------------------------------------------

    def keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/keys")["data"])

    def key(self, key_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/keys/{_segment(key_id)}"))

    def add_key(
        self,
        secret: str,
        provider: str,
        *,
        key_id: str | None = None,
        limits: Mapping[str, int] | None = None,
        models: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        max_in_flight: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"provider": provider, "secret": secret}
        if max_in_flight is not None:
            body["max_in_flight"] = max_in_flight
        if key_id is not None:
            body["id"] = key_id
        if limits:
            body["limits"] = dict(limits)
        if models:
            body["models"] = list(models)
        if metadata:
            body["metadata"] = dict(metadata)
        return dict(self._call("POST", "/keys", body))

    def set_state(self, key_id: str, state: str, reason: str | None = None) -> dict[str, Any]:
        body = {"state": state, **({"reason": reason} if reason else {})}
        return dict(self._call("POST", f"/keys/{_segment(key_id)}/state", body))

    def rotate(self, key_id: str, secret: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/keys/{_segment(key_id)}/rotate", {"secret": secret}))

    def revoke(self, key_id: str, reason: str | None = None) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/keys/{_segment(key_id)}", {"reason": reason} if reason else None))

    def budgets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/budgets")["data"])

    def policies(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/policies")["data"])

    def dry_run_policies(
        self, policies: Sequence[Mapping[str, Any]], requests: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"policies": list(policies)}
        if requests is not None:
            body["requests"] = list(requests)
        return dict(self._call("POST", "/policies/dry-run", body))

    # -- transport and errors -------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.ConnectError:
            raise AdminError(
                f"cannot connect to {self.url}: is apikeyrouter serving there? (point at it with --url or {URL_ENV})"
            ) from None
        except httpx.TimeoutException:
            raise AdminError(f"{self.url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise AdminError(f"{method} {self.url}{path} failed: {type(exc).__name__}") from None
        if response.status_code == 401:
            if self._has_token:
                raise AdminError(f"the admin token in {TOKEN_ENV} is wrong: {self.url} refused it (401)")
            raise AdminError(f"the admin token is missing: set {TOKEN_ENV} (401 from {self.url})")
        if response.status_code >= 400:
            raise AdminError(f"{method} {path}: {_api_message(response)} ({response.status_code})")
        try:
            return response.json()
        except ValueError:
            raise AdminError(f"{method} {path}: {self.url} did not answer JSON; is it apikeyrouter?") from None


def _segment(key_id: str) -> str:
    """A key id as one path segment (a '/' or '?' in it cannot reach another route)."""
    return quote(key_id, safe="")
