"""Shared test helpers: provider-shaped mock responses for httpx.MockTransport (imported, not a conftest,
so it cannot collide with fixtures other suites define)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx

from apikeyrouter.domain.request import ChatMessage, RequestIntent

Handler = Callable[[httpx.Request], httpx.Response]


class ChunkedBody(httpx.AsyncByteStream):
    """A response body delivered in the given pieces, optionally failing after them."""

    def __init__(self, parts: Iterable[bytes], fail_with: Exception | None = None) -> None:
        self.parts = list(parts)
        self.fail_with = fail_with

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.fail_with is not None:
            raise self.fail_with

    async def aclose(self) -> None:
        pass


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, headers={"content-type": "application/json", **(headers or {})}, content=json.dumps(body).encode()
    )


def sse_response(
    parts: Iterable[bytes], headers: dict[str, str] | None = None, fail_with: Exception | None = None
) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream; charset=utf-8", **(headers or {})},
        stream=ChunkedBody(parts, fail_with),
    )


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


def make_intent() -> RequestIntent:
    return RequestIntent(
        model="gpt-4o-mini",
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Say hi")),
        max_tokens=20,
        temperature=0.5,
        stop=("\n\n",),
    )


def mock_client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))
