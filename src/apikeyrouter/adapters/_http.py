"""What every HTTP adapter shares: the client recipe, error translation, scrubbing, SSE decoding.

Error translation happens once, here: an `httpx` exception becomes an `UpstreamError` (TIMEOUT or
CONNECTION) raised `from` it; an error status becomes an `UpstreamError` classified by the rule table.
Messages that came from upstream are scrubbed of anything that looks like key material before they are
stored on an exception, because exceptions end up in logs.

Two paths, one behaviour: a client made by `make_client` is a `PooledClient`, and `exchange` drives its
pool directly (`H11Transport.request`, a `PooledResponse`); any other `httpx.AsyncClient` (a test's
`MockTransport`, an embedder's own client) goes through httpx. Both send the same bytes (the JSON body
encoded here), hand `signal_from` a mapping with lowercase names, and raise the same httpx exceptions,
translated here the same way.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
import orjson
import structlog

from apikeyrouter.adapters._head import build_request as _build
from apikeyrouter.adapters._head import encode_json
from apikeyrouter.adapters._sse import MAX_EVENT_BYTES, SSEDecoder, SSEEvent, SSETooLarge
from apikeyrouter.adapters.base import AdapterResult
from apikeyrouter.adapters.classify import DEFAULT_RULES, ClassifyRule, ErrorInfo, classify
from apikeyrouter.adapters.pricing import ModelPrice, PriceTable
from apikeyrouter.adapters.tokens import count_request
from apikeyrouter.adapters.transport import H11Transport, PooledClient, PooledResponse
from apikeyrouter.domain.cost import CostEstimate
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import RequestIntent, SystemResponse, Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.errors import ApiKeyRouterError, MalformedResponse, StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret, redact

_S = TypeVar("_S")

# What `exchange` yields: httpx's response, or the direct path's (status_code, headers, aiter_bytes, aclose).
UpstreamResponse = httpx.Response | PooledResponse

log = structlog.get_logger("apikeyrouter.adapters")

# More tokens than any one call has ever used: a count above it is a broken report, not usage.
MAX_USAGE_TOKENS = 10**8
# More than any one answer holds: a body beyond this is broken or hostile, and is refused before it is
# buffered whole (a completion is rarely a megabyte; a stream event's bound is `_sse.MAX_EVENT_BYTES`).
MAX_BODY_BYTES = 32 * 1024 * 1024

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_USAGE_TOKENS",
    "HTTPAdapterBase",
    "SSEDecoder",
    "SSEEvent",
    "SSETooLarge",
    "UpstreamResponse",
    "dig",
    "encode_json",
    "scrub",
    "usage_count",
]

# Connect fast or fail over; reads are long because a non-streamed completion may think for a minute
# before its first byte. Callers bound the whole call with their own deadline (trio.fail_after).
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=10.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=30.0)

_ERROR_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 500


def scrub(text: str, secret: Secret | None = None) -> str:
    """Upstream text made safe to store, log or return: every piece of the key (if given) and anything
    key-shaped removed (`secret.redact`), then cut to a bounded length. Every upstream message, error
    code and type goes through here before it lands on an exception."""
    text = redact(text, secret)
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "..."
    return text


def _scrub_label(value: str | None, secret: Secret | None) -> str | None:
    """An upstream error code or type: short identifiers, but upstream text all the same."""
    return None if value is None else scrub(value, secret)[:100]


def usage_count(value: Any) -> int | None:
    """A token count a provider reported, if it is one: an int (not a bool) in `[0, MAX_USAGE_TOKENS]`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_USAGE_TOKENS:
        return value
    return None


def _shown(value: Any) -> Any:
    # For the log: numbers as they came, anything else only by type (it is upstream text, unscrubbed).
    return value if isinstance(value, int | float) else type(value).__name__


def log_bad_usage(provider: str, model: str, input_tokens: Any, output_tokens: Any) -> None:
    log.warning(
        "provider_bad_usage",
        provider=provider,
        model=model,
        input_tokens=_shown(input_tokens),
        output_tokens=_shown(output_tokens),
        billed="worst_case",
    )


def dig(data: Any, path: str) -> Any:
    """`dig(body, "choices.0.message.content")`; None when any step is missing."""
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return None
            current = current[index]
        else:
            return None
        if current is None:
            return None
    return current


def parse_json(text: bytes | str) -> Any:
    """The JSON value of `text`, or None when it is not JSON (or is nested deeper than Python recurses).

    orjson first (several times faster); what it refuses and the stdlib reads (NaN, lone surrogates,
    integers beyond 64 bits, deeper nesting) is read by the stdlib, so the answer is the stdlib's."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def error_fields(body: Any, raw: bytes) -> tuple[str | None, str | None, str]:
    """(type, code, message) from OpenAI- or Anthropic-shaped error bodies, or the raw text."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(err, Mapping):
        etype = err.get("type")
        code = err.get("code")
        message = err.get("message")
        return (
            etype if isinstance(etype, str) else None,
            str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
            message if isinstance(message, str) else json.dumps(err),  # scrub() truncates, after redacting
        )
    if isinstance(err, str):
        return None, None, err
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return None, None, body["message"]
    return None, None, raw.decode("utf-8", errors="replace").strip()


class HTTPAdapterBase:
    """Client recipe, cost and error plumbing shared by the concrete adapters."""

    kind: str = "http"

    def __init__(
        self,
        *,
        provider: str,
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
        prices: Mapping[str, ModelPrice | tuple[str, str]] | None = None,
        rules: Sequence[ClassifyRule] = DEFAULT_RULES,
        default_max_output: int = 4096,
    ) -> None:
        self.provider = provider
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.limits = limits or DEFAULT_LIMITS
        self.extra_headers = dict(headers or {})
        self.prices = PriceTable(prices)
        self.rules = tuple(rules)
        self.default_max_output = default_max_output

    def make_transport(self) -> httpx.AsyncBaseTransport:
        """The client's transport: our h11 pool (`adapters.transport`), sized by `limits`. Override it (or
        `make_client`) to put the adapter on something else, e.g. an `httpx.MockTransport`."""
        return H11Transport(limits=self.limits)

    def make_client(self) -> httpx.AsyncClient:
        """A `PooledClient` on our transport (the adapters then drive its pool directly), or, when
        `make_transport` gives something else, a plain `httpx.AsyncClient` on it."""
        transport = self.make_transport()
        if isinstance(transport, H11Transport):
            return PooledClient(transport, timeout=self.timeout)
        # trust_env=False: no proxy or netrc picked up from the environment behind the operator's back.
        return httpx.AsyncClient(
            transport=transport,
            timeout=self.timeout,
            trust_env=False,
            follow_redirects=False,
        )

    # -- cost ------------------------------------------------------------------------------------------

    def max_output(self, intent: RequestIntent) -> int:
        return intent.max_tokens or self.default_max_output

    # The last intent estimated and its estimate: the request path estimates before the call (the budget
    # hold) and a stream's opening asks again for the same intent object; counting its tokens once is enough.
    # Held by identity (an intent is immutable), one slot, so it costs nothing when requests interleave.
    _last_estimate: tuple[RequestIntent, CostEstimate] | None = None

    def estimate(self, intent: RequestIntent) -> CostEstimate:
        last = self._last_estimate
        if last is not None and last[0] is intent:
            return last[1]
        counted = count_request(intent)
        max_out = self.max_output(intent)
        priced = self.prices.priced(intent.model, counted.tokens, max_out)
        estimate = CostEstimate(
            input_tokens=counted.tokens,
            max_output_tokens=max_out,
            worst_case_cost=priced.amount,
            price_known=priced.known,
            exact_tokens=counted.exact,
        )
        self._last_estimate = (intent, estimate)
        return estimate

    def worst_case_usage(self, intent: RequestIntent) -> Usage:
        """The usage `estimate` prices as the worst case (what the budget holds), flagged as estimated."""
        return Usage(count_request(intent).tokens, self.max_output(intent), estimated=True)

    def reported_usage(self, intent: RequestIntent, input_tokens: Any, output_tokens: Any) -> Usage:
        """The usage a provider reported, or, when either count is not a sane token count (negative, not an
        integer, absurd), the worst case: it is logged (`provider_bad_usage`) and billed as held."""
        i, o = usage_count(input_tokens), usage_count(output_tokens)
        if i is not None and o is not None:
            return Usage(i, o)
        log_bad_usage(self.provider, intent.model, input_tokens, output_tokens)
        return self.worst_case_usage(intent)

    def cost(self, model: str, usage: Usage) -> Decimal:
        """Actual cost of `usage`; 0 for a model without a price (see `price_known`)."""
        return self.prices.cost(model, usage)

    def price_known(self, model: str) -> bool:
        return self.prices.match(model) is not None

    # -- errors ----------------------------------------------------------------------------------------

    def signal_from(self, headers: Mapping[str, str]) -> QuotaSignal:
        """The quota signal in a response's headers: an `httpx.Headers`, or on the direct path a
        `LowerHeaders` dict (names lowercase; read them lowercase and both work)."""
        return QuotaSignal()

    def error_info(self, status: int, body: Any, raw: bytes) -> ErrorInfo:
        etype, code, message = error_fields(body, raw)
        return ErrorInfo(status=status, error_type=etype, code=code, message=message, provider=self.kind)

    def status_error(self, response: UpstreamResponse, raw: bytes, secret: Secret) -> UpstreamError:
        info = self.error_info(response.status_code, parse_json(raw), raw)
        failure = classify(info, self.rules)
        signal = self.signal_from(response.headers)
        message = scrub(info.message or f"HTTP {response.status_code}", secret)
        return UpstreamError(
            f"{self.provider} answered {response.status_code} ({failure.value}): {message}",
            failure=failure,
            status=response.status_code,
            provider=self.provider,
            retry_after=signal.retry_after_s,
            code=_scrub_label(info.code, secret),
            error_type=_scrub_label(info.error_type, secret),
            signal=signal,
        )

    def transport_error(
        self, exc: httpx.HTTPError, secret: Secret, *, streaming: bool = False, signal: QuotaSignal | None = None
    ) -> UpstreamError:
        cls: type[UpstreamError] = StreamInterrupted if streaming else UpstreamError
        if isinstance(exc, httpx.TimeoutException):
            failure = FailureClass.TIMEOUT
        elif isinstance(exc, httpx.DecodingError):
            return MalformedResponse(
                f"{self.provider}: undecodable body: {scrub(str(exc), secret)}",
                failure=FailureClass.SERVER_ERROR,
                provider=self.provider,
                signal=signal,
            )
        else:
            failure = FailureClass.CONNECTION
        detail = scrub(str(exc), secret) or type(exc).__name__
        what = "stream broke" if streaming else "request failed"
        return cls(
            f"{self.provider}: {what}: {type(exc).__name__}: {detail}",
            failure=failure,
            provider=self.provider,
            signal=signal,
        )

    def adapter_error(self, exc: Exception, secret: Secret) -> UpstreamError:
        """An exception the adapter did not classify, as a typed ADAPTER_ERROR: the type, the scrubbed
        message and where it was raised (file:line), never the values involved."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
        detail = scrub(str(exc), secret)
        if isinstance(exc, UnicodeError):
            detail = "text that cannot be encoded"  # its message quotes the offending character and position
        return UpstreamError(
            f"{self.provider}: adapter error: {type(exc).__name__}{where}: {detail}",
            failure=FailureClass.ADAPTER_ERROR,
            provider=self.provider,
        )

    def guarded(self, secret: Secret) -> _Guarded:
        """Building and sending a request: anything raised that is not already one of ours becomes an
        ADAPTER_ERROR (`from None`: the original may hold the key material it failed to encode). A plain
        context manager object, not a generator: it wraps several steps of every request."""
        return _Guarded(self, secret)

    def malformed(
        self, what: str, secret: Secret, *, status: int | None = None, signal: QuotaSignal | None = None
    ) -> MalformedResponse:
        return MalformedResponse(
            f"{self.provider}: malformed response: {scrub(what, secret)}",
            failure=FailureClass.SERVER_ERROR,
            status=status,
            provider=self.provider,
            signal=signal,
        )

    # -- the exchange ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def exchange(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        secret: Secret,
        headers: Mapping[str, str],
        json_body: Any = None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Send and yield the open response with a 2xx status; raise a classified error otherwise.

        The response is always opened in streaming mode and closed on exit, so a trio cancellation at any
        point (waiting for headers, reading the body, mid-stream) closes the connection: the upstream
        sees the request aborted instead of finishing it for nobody.
        """
        response = await self.send(client, method, url, secret=secret, headers=headers, json_body=json_body)
        try:
            yield response
        finally:
            await response.aclose()

    async def send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        secret: Secret,
        headers: Mapping[str, str],
        json_body: Any = None,
    ) -> UpstreamResponse:
        """`exchange` without the context manager: the open 2xx response, which the caller must `aclose()`
        (in a `finally`); an error status is read, closed and raised as a classified error here."""
        with self.guarded(secret):
            merged = {**self.extra_headers, **headers} if self.extra_headers else headers
            content = None if json_body is None else encode_json(json_body)
            request = None if isinstance(client, PooledClient) else _build(client, method, url, merged, content)
        try:
            if isinstance(client, PooledClient):
                response: UpstreamResponse = await client.pool.request(
                    method, url, merged, content, client.timeout, secret=secret.reveal()
                )
            else:
                assert request is not None
                response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, secret) from exc
        except Exception as exc:
            raise self.adapter_error(exc, secret) from None
        if response.status_code >= 300:
            try:
                try:
                    raw = await _read_bounded(response, _ERROR_BODY_LIMIT)
                except httpx.HTTPError as exc:
                    raise self.transport_error(exc, secret, signal=self.signal_from(response.headers)) from exc
                raise self.status_error(response, raw, secret)
            finally:
                await response.aclose()
        return response

    @asynccontextmanager
    async def event_stream(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        secret: Secret,
        headers: Mapping[str, str],
        json_body: Any,
        make: Callable[[UpstreamResponse], _S],
    ) -> AsyncIterator[_S]:
        """POST for a server-sent event stream; `make` wraps the open response (a 2xx `text/event-stream`)."""
        response = await self.send_for_events(client, url, secret=secret, headers=headers, json_body=json_body)
        try:
            yield make(response)
        finally:
            await response.aclose()

    async def send_for_events(
        self, client: httpx.AsyncClient, url: str, *, secret: Secret, headers: Mapping[str, str], json_body: Any
    ) -> UpstreamResponse:
        """`event_stream`'s response, open, which the caller must `aclose()`: a 2xx `text/event-stream`,
        else closed here and raised as a classified error."""
        events_headers = {**headers, "accept": "text/event-stream"}
        response = await self.send(client, "POST", url, secret=secret, headers=events_headers, json_body=json_body)
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            try:
                raise self.malformed(
                    f"expected an event stream, got content-type {ctype!r}",
                    secret,
                    status=response.status_code,
                    signal=self.signal_from(response.headers),
                )
            finally:
                await response.aclose()
        return response

    async def read_json(self, response: UpstreamResponse, secret: Secret, signal: QuotaSignal) -> Mapping[str, Any]:
        try:
            raw = await _read_bounded(response, MAX_BODY_BYTES + 1)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, secret, signal=signal) from exc
        if len(raw) > MAX_BODY_BYTES:
            raise self.malformed(
                f"a body larger than {MAX_BODY_BYTES} bytes", secret, status=response.status_code, signal=signal
            )
        body = parse_json(raw)
        if not isinstance(body, Mapping):
            snippet = raw[:200].decode("utf-8", errors="replace")
            raise self.malformed(
                f"expected a JSON object, got {snippet!r}", secret, status=response.status_code, signal=signal
            )
        return body


class _Guarded:
    __slots__ = ("_adapter", "_secret")

    def __init__(self, adapter: HTTPAdapterBase, secret: Secret) -> None:
        self._adapter, self._secret = adapter, secret

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is None or isinstance(exc, ApiKeyRouterError) or not isinstance(exc, Exception):
            return False
        raise self._adapter.adapter_error(exc, self._secret) from None


async def _read_bounded(response: UpstreamResponse, limit: int) -> bytes:
    if type(response) is PooledResponse:
        return await response.read(limit)
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        parts.append(part)
        size += len(part)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


Builder = Callable[[RequestIntent], Any]


class JSONChatAdapter(HTTPAdapterBase):
    """An adapter that POSTs a JSON chat body to `base_url + endpoint` and reads one JSON answer
    (OpenAI, Anthropic). Subclasses say how to authenticate, what to send and how to read it back."""

    endpoint: str = ""
    base_url: str = ""

    def _auth(self, secret: Secret) -> dict[str, str]:
        raise NotImplementedError

    def body(self, intent: RequestIntent, *, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def normalise(
        self, data: Mapping[str, Any], intent: RequestIntent, secret: Secret, signal: QuotaSignal
    ) -> SystemResponse:
        raise NotImplementedError

    async def complete(self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret) -> AdapterResult:
        with self.guarded(secret):
            headers, body = self._auth(secret), self.body(intent, stream=False)
        url = f"{self.base_url}{self.endpoint}"
        response = await self.send(client, "POST", url, secret=secret, headers=headers, json_body=body)
        try:
            with self.guarded(secret):
                signal = self.signal_from(response.headers)
            data = await self.read_json(response, secret, signal)
        finally:
            await response.aclose()
        with self.guarded(secret):
            return AdapterResult(response=self.normalise(data, intent, secret, signal), signal=signal)

    @asynccontextmanager
    async def chat_stream(
        self, client: httpx.AsyncClient, intent: RequestIntent, secret: Secret, make: Callable[..., _S]
    ) -> AsyncIterator[_S]:
        """Open the streamed form of `complete`; `make(self, response, secret, model=, estimated_input=,
        max_output=)` wraps the open event stream (an `SSEStream` subclass)."""
        with self.guarded(secret):
            headers, body = self._auth(secret), self.body(intent, stream=True)
            estimated, max_output = self.estimate(intent).input_tokens, self.max_output(intent)
        url = f"{self.base_url}{self.endpoint}"
        response = await self.send_for_events(client, url, secret=secret, headers=headers, json_body=body)
        try:
            with self.guarded(secret):
                stream = make(
                    self, response, secret, model=intent.model, estimated_input=estimated, max_output=max_output
                )
            yield stream
        finally:
            await response.aclose()
