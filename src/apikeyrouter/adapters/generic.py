"""Any JSON-over-HTTP API behind a key: a translation service, an embedding API, a search API.

Everything provider-specific is configuration: URL and method, the auth header and its format
(`"Bearer {key}"`, `"{key}"`, `"Token {key}"`), how the body is built (by default `intent.extra` is
sent as-is, so a non-chat caller puts its own JSON there), dotted paths to the content and usage in the
answer (`"choices.0.message.content"`, `"usage.input_tokens"`), and which headers carry quota,
mapped to `QuotaSignal` fields. Quota header values are parsed as integers for counts and as durations
(`"30"`, `"1m30s"`, `"250ms"`) for the `*_s` fields.

The generic adapter does not stream (`capabilities.streaming` is False); `open_stream` still works,
yielding the whole answer as one chunk, so a caller that streams anyway gets a correct result.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx

from apikeyrouter.adapters._http import HTTPAdapterBase, dig
from apikeyrouter.adapters.base import AdapterResult
from apikeyrouter.adapters.classify import DEFAULT_RULES, ClassifyRule
from apikeyrouter.adapters.headers import parse_count, parse_duration, parse_retry_after
from apikeyrouter.adapters.pricing import ModelPrice
from apikeyrouter.domain.request import RequestIntent, StreamChunk, SystemResponse, Usage
from apikeyrouter.domain.signal import Capabilities, QuotaSignal
from apikeyrouter.secret import Secret

__all__ = ["GenericHTTPAdapter"]

_SIGNAL_FIELDS = frozenset(f.name for f in attrs.fields(QuotaSignal))


def _passthrough(intent: RequestIntent) -> Any:
    return dict(intent.extra)


class GenericHTTPAdapter(HTTPAdapterBase):
    kind = "generic"

    def __init__(
        self,
        *,
        url: str,
        method: str = "POST",
        auth_header: str = "Authorization",
        auth_format: str = "Bearer {key}",
        body_builder: Callable[[RequestIntent], Any] | None = None,
        content_path: str | None = None,
        input_tokens_path: str | None = None,
        output_tokens_path: str | None = None,
        model_path: str | None = None,
        finish_reason_path: str | None = None,
        quota_headers: Mapping[str, str] | None = None,
        models: Iterable[str] = (),
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
        prices: Mapping[str, ModelPrice | tuple[str, str]] | None = None,
        rules: Sequence[ClassifyRule] = DEFAULT_RULES,
        provider: str = "generic",
        default_max_output: int = 0,
    ) -> None:
        super().__init__(
            provider=provider,
            timeout=timeout,
            limits=limits,
            headers=headers,
            prices=prices,
            rules=rules,
            default_max_output=default_max_output,
        )
        if "{key}" not in auth_format:
            raise ValueError("auth_format must contain {key}")
        bad = sorted(set((quota_headers or {}).values()) - _SIGNAL_FIELDS)
        if bad:
            raise ValueError(f"quota_headers map to unknown QuotaSignal fields: {bad}; have {sorted(_SIGNAL_FIELDS)}")
        self.url = url
        self.method = method.upper()
        self.auth_header = auth_header
        self.auth_format = auth_format
        self.body_builder = body_builder or _passthrough
        self.content_path = content_path
        self.input_tokens_path = input_tokens_path
        self.output_tokens_path = output_tokens_path
        self.model_path = model_path
        self.finish_reason_path = finish_reason_path
        self.quota_headers = {k.lower(): v for k, v in (quota_headers or {}).items()}
        self.capabilities = Capabilities(models=frozenset(models), streaming=False)

    def signal_from(self, headers: Mapping[str, str]) -> QuotaSignal:
        values: dict[str, Any] = {}
        for header, field in self.quota_headers.items():
            raw = headers.get(header)
            if raw is None:
                continue
            values[field] = parse_duration(raw) if field.endswith("_s") else parse_count(raw)
        if "retry_after_s" not in values:
            values["retry_after_s"] = parse_retry_after(headers)
        return QuotaSignal(**values)

    async def complete(self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret) -> AdapterResult:
        with self.guarded(secret):
            headers = {self.auth_header: self.auth_format.format(key=secret.reveal()), "accept": "application/json"}
            body = self.body_builder(intent)
        async with self.exchange(
            client,
            self.method,
            self.url,
            secret=secret,
            headers=headers,
            json_body=None if self.method in ("GET", "HEAD", "DELETE") else body,
        ) as response:
            with self.guarded(secret):
                signal = self.signal_from(response.headers)
            data = await self.read_json(response, secret, signal)
        with self.guarded(secret):
            return AdapterResult(response=self.normalise(data, intent, secret, signal), signal=signal)

    def normalise(
        self, data: Mapping[str, Any], intent: RequestIntent, secret: Secret, signal: QuotaSignal
    ) -> SystemResponse:
        if self.content_path is None:
            content = ""
        else:
            found = dig(data, self.content_path)
            if found is None:
                raise self.malformed(f"nothing at {self.content_path!r} in the answer", secret, signal=signal)
            content = found if isinstance(found, str) else json.dumps(found)
        # A path that is configured but absent in this answer counts 0; a value there that is no token count
        # (negative, fractional, absurd) makes the usage the worst case, logged.
        usage = self.reported_usage(
            intent, self._count(data, self.input_tokens_path), self._count(data, self.output_tokens_path)
        )
        model = dig(data, self.model_path) if self.model_path else None
        finish = dig(data, self.finish_reason_path) if self.finish_reason_path else None
        return SystemResponse(
            content=content,
            model=model if isinstance(model, str) else intent.model,
            usage=usage,
            finish_reason=finish if isinstance(finish, str) else None,
            raw=dict(data),
        )

    @staticmethod
    def _count(data: Any, path: str | None) -> Any:
        if path is None:
            return 0
        value = dig(data, path)
        return 0 if value is None else value

    @asynccontextmanager
    async def open_stream(
        self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret
    ) -> AsyncIterator[_OneShotStream]:
        result = await self.complete(client, intent, secret)
        yield _OneShotStream(result)


class _OneShotStream:
    def __init__(self, result: AdapterResult) -> None:
        self.signal = result.signal
        self._result = result
        self._sent = False

    @property
    def usage(self) -> Usage | None:
        return self._result.response.usage if self._sent else None

    def __aiter__(self) -> _OneShotStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        r = self._result.response
        return StreamChunk(delta=r.content, finish_reason=r.finish_reason or "stop", usage=r.usage, model=r.model)
