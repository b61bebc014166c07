"""`ProxyApp`: the OpenAI- and Anthropic-compatible proxy and management API, one `http11.Handler`.

Routing is a dict lookup on the path (plus three parametrised shapes), auth a constant-time comparison
against every configured token. A client that leaves is seen by the server (`http11`), which cancels the
handler: cancelling the route cancels the upstream call and releases its reservation, and the request is
counted as 499.

Adding an endpoint: write the logic in a class like `AdminAPI` (returns `(status, JSON value)`), add a thin
handler `async def _x(self, ex: Exchange, param: str) -> None` here, and name it in `_static` (or a
parametrised table in `_resolve`). In a handler: `self._authorize_admin(ex)`, `await self._json_body(ex)`,
`await self._reply(ex, status, value, headers)` for JSON, `await self._send(ex, status, body, content_type,
headers)` for HTML or other bytes, `ex.request.http.header(b"...")` / `.cookies()` for any header, and for a
server-sent event stream `await self._start_sse(ex)`, then `await ex.response.send(event)` until done (the
handler is cancelled when the client leaves) and `await ex.response.end()`.

Deadlines: `request_deadline` (lowered per request by `x-apikeyrouter-deadline`) bounds a non-streaming
request end to end and a stream until its headers go out (key chosen, upstream answering); the router sees
it as trio's effective deadline. After that a stream may run as long as chunks keep coming, at most
`stream_idle_timeout` apart.

The two inference APIs share one path (auth, deadline, disconnect, failover, headers); they differ in how
a request is read (`RequestIntent.from_openai` / `from_anthropic`), how an answer and a stream are written
(`_openai` / `_anthropic`), and how an error is said (the route's `ErrorShape`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson
import structlog
import trio

from apikeyrouter.adapters.tokens import load_for
from apikeyrouter.domain.request import RequestIntent, SystemResponse
from apikeyrouter.errors import UpstreamError
from apikeyrouter.observe import RequestAttempted
from apikeyrouter.observe.client_metrics import ClientMetrics
from apikeyrouter.observe.metrics import CONTENT_TYPE_LATEST, ProxyMetrics
from apikeyrouter.proxy import http11
from apikeyrouter.proxy._anthropic import AnthropicRelay, anthropic_error_shape, count_tokens_json, message_json
from apikeyrouter.proxy._errors import http_error_for, unwrap
from apikeyrouter.proxy._http import (
    BodyTooLarge,
    ClientGone,
    ErrorShape,
    Exchange,
    HTTPError,
    MalformedBody,
    Relay,
    Request,
    deadline_error,
    json_bytes,
    log_exchange,
    openai_error_shape,
    send_error,
    send_json,
    send_response,
)
from apikeyrouter.proxy._openai import OpenAIRelay, completion_json, models_json
from apikeyrouter.proxy.admin import AdminAPI
from apikeyrouter.proxy.dashboard import Dashboard
from apikeyrouter.proxy.dashboard_routes import dashboard_routes
from apikeyrouter.proxy.policies import PolicyAPI, PolicyRouter, own_policy
from apikeyrouter.proxy.state_query import state_query
from apikeyrouter.runtime.api import RouterAPI
from apikeyrouter.secret import Secret

__all__ = ["ProxyApp"]

log = structlog.get_logger("apikeyrouter.proxy")

Handler = Callable[[Exchange, str], Awaitable[None]]
Render = Callable[[SystemResponse], Any]
Own = Mapping[str, Any]  # {"policy": the request's own policies} or {} (route/stream keyword arguments)

CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer"
MIN_DEADLINE_S = 0.001  # the smallest x-apikeyrouter-deadline taken; anything smaller is a 400

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_WWW_AUTH = [(b"www-authenticate", b'Bearer realm="apikeyrouter"')]


def _json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    # orjson says "unexpected character": name the constant Python's parser would have taken.
    for at in (exc.pos - 1, exc.pos):
        for constant in (b"-Infinity", b"NaN", b"Infinity"):
            if at >= 0 and raw.startswith(constant, at):
                return f"{constant.decode()} is not a JSON value (at char {at})"
    return str(exc)


class ProxyApp:
    """The proxy's application. Serve it with `serve_proxy` (our HTTP/1.1 server on trio sockets).

    client_tokens: bearer tokens accepted for inference; empty means inference is open (serve only on loopback).
    clients: (token, client id) of each `[[clients]]` entry with a token: its requests carry the id.
    admin_token: bearer token for management endpoints; None disables them (403).
    max_body_bytes: larger request bodies get 413 (checked against Content-Length before reading).
    request_deadline: seconds a request may take (see the module docstring for streams).
    stream_idle_timeout: seconds a stream may go without a chunk before it is ended with an error event.
    metrics_require_admin: put /metrics behind the admin token (it shows key ids and states, never secrets).
    log_requests: one structlog event per request (method, path, status, latency, key, attempts, ids).
    """

    def __init__(
        self,
        router: RouterAPI,
        *,
        client_tokens: Sequence[Secret] = (),
        clients: Sequence[tuple[Secret, str]] = (),
        admin_token: Secret | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        request_deadline: float = 120.0,
        stream_idle_timeout: float = 120.0,
        metrics_require_admin: bool = False,
        log_requests: bool = True,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        if max_body_bytes < 1 or not request_deadline > 0 or not stream_idle_timeout > 0:
            raise ValueError("max_body_bytes, request_deadline and stream_idle_timeout must be positive")
        self.router = router
        self.client_tokens = tuple(client_tokens)
        self.clients = tuple(clients)
        self.admin_token = admin_token
        self.max_body_bytes = max_body_bytes
        self.request_deadline = float(request_deadline)
        self.stream_idle_timeout = float(stream_idle_timeout)
        self.metrics_require_admin = metrics_require_admin
        self.log_requests = log_requests
        # Only the real router has a shared store to report (test doubles of RouterAPI need not).
        self._store_status: Callable[[], dict[str, Any] | None] = getattr(router, "store_status", lambda: None)
        self._store_health: Callable[[], dict[str, Any] | None] = getattr(router, "store_health", lambda: None)
        if metrics is None:
            metrics = ProxyMetrics(router.keys, self._store_status, self._store_health)
        self.metrics = metrics
        # Every attempt, failovers included, counted inline as the router publishes it (EventBus.observe).
        router.events.observe(RequestAttempted, self.metrics.attempt)
        self.client_metrics = ClientMetrics(self.metrics.registry, router.events, router.budgets)
        self.admin = AdminAPI(router)
        self.dashboard = Dashboard(router, admin_token)
        self._static: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/models": {"GET": self._models},
            "/health": {"GET": self._health},
            "/health/ready": {"GET": self._ready},
            "/metrics": {"GET": self._metrics},
            "/state": {"GET": self._state},
            "/state/query": {"GET": self._state_query},
            "/keys": {"GET": self._list_keys, "POST": self._add_key},
            "/decisions": {"GET": self._list_decisions},
            "/budgets": {"GET": self._list_budgets},
            **dashboard_routes(self.dashboard, self.request_deadline),
            "/policies": {"GET": self._list_policies, "POST": self._post_policies},
            "/policies/dry-run": {"POST": self._dry_run_policies},
            "/policies/audit": {"GET": self._policy_audit},
        }
        self.policy_api = PolicyAPI(router) if isinstance(router, PolicyRouter) else None
        self._policy_route: dict[str, Handler] = {"DELETE": self._delete_policy}
        self._key_routes: dict[str, dict[str, Handler]] = {
            "": {"GET": self._get_key, "DELETE": self._revoke_key},
            "rotate": {"POST": self._rotate_key},
            "state": {"POST": self._set_key_state},
        }
        self._decision_route: dict[str, Handler] = {"GET": self._get_decision}
        # Routes whose errors are said in Anthropic's shape; every other route speaks OpenAI's.
        self._shapes: dict[str, ErrorShape] = {
            "/v1/messages": anthropic_error_shape,
            "/v1/messages/count_tokens": anthropic_error_shape,
        }

    # -- entry ------------------------------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[str, dict[str, Handler] | None, str]:
        """(route template for metrics and logs, handlers by method, path parameter)."""
        methods = self._static.get(path)
        if methods is not None:
            return path, methods, ""
        parts = path.split("/")
        if len(parts) in (3, 4) and parts[1] == "keys" and parts[2]:
            action = parts[3] if len(parts) == 4 else ""
            methods = self._key_routes.get(action)
            if methods is not None:
                return ("/keys/{id}/" + action if action else "/keys/{id}"), methods, parts[2]
        if len(parts) == 3 and parts[1] == "decisions" and parts[2]:
            return "/decisions/{id}", self._decision_route, parts[2]
        if len(parts) == 3 and parts[1] == "policies" and parts[2]:
            return "/policies/{id}", self._policy_route, parts[2]
        return "other", None, ""

    async def __call__(self, http: http11.Request, response: http11.Response) -> None:
        start = trio.current_time()
        request = Request(http)
        route, methods, param = self._resolve(request.path)
        shape = self._shapes.get(route, openai_error_shape)
        ex = Exchange(request, response, route, request.request_id or os.urandom(12).hex(), shape)
        try:
            if methods is None:
                raise HTTPError(404, f"no route {request.method} {request.path}", code="not_found")
            handler = methods.get(request.method)
            if handler is None:
                allow = ", ".join(sorted(methods)).encode()
                raise HTTPError(
                    405,
                    f"method {request.method} not allowed on {request.path} (allowed: {allow.decode()})",
                    code="method_not_allowed",
                    headers=[(b"allow", allow)],
                )
            await handler(ex, param)
        except ClientGone:
            ex.disconnected = True
        except Exception as exc:
            await self._fail(ex, exc)
        finally:
            if ex.gone() and not ex.endless:
                ex.status = CLIENT_CLOSED
            elapsed = trio.current_time() - start
            self.metrics.observe(route, ex.status, elapsed)
            if self.log_requests:
                log_exchange(ex, elapsed)

    async def _fail(self, ex: Exchange, exc: Exception) -> None:
        inner = unwrap(exc)
        error = http_error_for(inner)
        if isinstance(inner, UpstreamError):
            self.metrics.failed(inner.failure.value)
        if error.status >= 500 and not isinstance(inner, HTTPError | UpstreamError):
            log.error("request_failed", request_id=ex.request_id, path=ex.request.path, exc_info=inner)
        if ex.started:
            return  # the answer is under way; nothing more can be said in HTTP
        extra = [(b"x-request-id", ex.request_id.encode())]
        if isinstance(inner, UpstreamError) and inner.key_id:
            extra.append((b"x-apikeyrouter-key-id", inner.key_id.encode()))
        if error.status == 401:
            extra += _WWW_AUTH
        ex.started = True
        ex.status = error.status  # counted as said, should the send fail
        try:
            ex.status = await send_error(ex.response, error, extra, shape=ex.shape, request_id=ex.request_id)
        except ClientGone:
            ex.disconnected = True

    # -- helpers --------------------------------------------------------------------------------------

    async def _reply(
        self, ex: Exchange, status: int, value: Any, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer with `value` as JSON (and any extra `headers`, a `set-cookie` say)."""
        ex.status = status
        ex.started = True
        await send_json(ex.response, status, value, [(b"x-request-id", ex.request_id.encode()), *headers])

    async def _send(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        content_type: bytes = b"text/html; charset=utf-8",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Answer with `body` as it is (HTML by default)."""
        ex.status = status
        ex.started = True
        head = [(b"content-type", content_type), (b"x-request-id", ex.request_id.encode()), *headers]
        await send_response(ex.response, status, body, head)

    async def _start_sse(self, ex: Exchange, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Start a server-sent event stream: then `ex.response.send(event)` each event, `ex.response.end()`."""
        ex.status = 200
        ex.started = True
        await ex.response.start(200, [*_SSE_HEADERS, (b"x-request-id", ex.request_id.encode()), *headers])

    def _authorize_client(self, ex: Exchange, *, x_api_key: bool = False) -> None:
        """A client token from `Authorization: Bearer`, or (Anthropic's clients, `x_api_key`) `x-api-key`."""
        if not self.client_tokens and not self.clients:
            return
        token = ex.request.bearer()
        if token is None and x_api_key:
            token = ex.request.x_api_key()
        if token is None:
            how = "'x-api-key: <client token>' or " if x_api_key else ""
            raise HTTPError(
                401,
                f"missing API key: send {how}'Authorization: Bearer <client token>'",
                code="invalid_api_key",
            )
        matched: str | None = None
        # Compare against every token, whatever matched, so timing says nothing about which one did.
        # A flat token is an anonymous client named by its fingerprint; a [[clients]] token, by its id.
        for secret in self.client_tokens:
            if secret.matches(token) and matched is None:
                matched = secret.fingerprint
        for secret, client_id in self.clients:
            if secret.matches(token) and matched is None:
                matched = client_id
        if matched is None:
            raise HTTPError(401, "incorrect API key provided", code="invalid_api_key")
        ex.client = matched

    def _authorize_admin(self, ex: Exchange) -> None:
        if self.admin_token is None:
            raise HTTPError(
                403,
                "management endpoints are disabled: no admin token is configured "
                "(set server.admin_token or server.admin_token_env)",
                type="permission_error",
                code="admin_disabled",
            )
        token = ex.request.bearer()
        if token is None or not self.admin_token.matches(token):
            raise HTTPError(
                401, "admin token required: send 'Authorization: Bearer <admin token>'", code="invalid_admin_token"
            )

    async def _json_body(self, ex: Exchange, *, optional: bool = False) -> Any:
        http = ex.request.http
        try:
            if http.body_complete():  # it came with the head: nothing to wait for
                raw = await http.read_body(self.max_body_bytes)
            else:  # a client that stops sending its body must not hold this task: the body gets the deadline
                with trio.fail_after(self.request_deadline):
                    raw = await http.read_body(self.max_body_bytes)
        except MalformedBody as exc:
            raise HTTPError(400, f"malformed request body: {exc}") from None
        except trio.TooSlowError:
            raise HTTPError(408, "the request body did not arrive in time", code="request_timeout") from None
        except BodyTooLarge:
            raise HTTPError(
                413, f"request body is larger than {self.max_body_bytes} bytes", code="request_too_large"
            ) from None
        if not raw.strip():
            if optional:
                return None
            raise HTTPError(400, "request body is empty: expected a JSON object")
        try:
            # orjson refuses what no adapter could send on and Python's own parser takes: NaN and Infinity
            # (not JSON), lone UTF-16 surrogates ("\ud800", not UTF-8), nesting deeper than 1024.
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {_json_problem(raw, exc)}") from None

    def _deadline(self, request: Request) -> float:
        raw = request.deadline_header
        if raw is None:
            return self.request_deadline
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (value >= MIN_DEADLINE_S and math.isfinite(value)):
            # 1e-320 is positive, but no request can be answered in it: it is a mistake, not a deadline.
            raise HTTPError(
                400,
                f"x-apikeyrouter-deadline must be a number of seconds, at least {MIN_DEADLINE_S:g}",
                param="x-apikeyrouter-deadline",
            )
        return min(value, self.request_deadline)

    def _metadata_headers(self, ex: Exchange, metadata: Any) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", ex.request_id.encode())]
        if metadata is not None:
            ex.key_id = metadata.key_used
            ex.attempts = metadata.attempts
            ex.decision_id = metadata.decision_id
            headers += [
                (b"x-apikeyrouter-key-id", metadata.key_used.encode()),
                (b"x-apikeyrouter-attempts", str(metadata.attempts).encode()),
                (b"x-apikeyrouter-decision-id", metadata.decision_id.encode()),
            ]
            self.metrics.served(metadata.key_used, metadata.provider, metadata.attempts)
        return headers

    # -- inference ------------------------------------------------------------------------------------

    async def _chat(self, ex: Exchange, _: str) -> None:
        self._authorize_client(ex)
        body = await self._json_body(ex)
        intent = RequestIntent.from_openai(body)
        completion_id, created = "chatcmpl-" + ex.request_id, int(time.time())
        options = intent.extra.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        await self._infer(
            ex,
            intent,
            lambda response: completion_json(response, completion_id, created),
            lambda: OpenAIRelay(completion_id, created, intent.model, include_usage),
        )

    async def _messages(self, ex: Exchange, _: str) -> None:
        """Anthropic's Messages API: the same routing, in Anthropic's request, answer, event and error shapes."""
        self._authorize_client(ex, x_api_key=True)
        body = await self._json_body(ex)
        intent = RequestIntent.from_anthropic(body)
        message_id = "msg_" + ex.request_id
        await self._infer(
            ex,
            intent,
            lambda response: message_json(response, message_id),
            lambda: AnthropicRelay(message_id, intent),
        )

    async def _count_tokens(self, ex: Exchange, _: str) -> None:
        self._authorize_client(ex, x_api_key=True)
        body = await self._json_body(ex)
        intent = RequestIntent.from_anthropic(body, count_only=True)
        await load_for(intent)  # a first count loads its tokenizer table in a worker thread, not on the loop
        await self._reply(ex, 200, count_tokens_json(intent))

    async def _infer(self, ex: Exchange, intent: RequestIntent, render: Render, relay: Callable[[], Relay]) -> None:
        deadline = self._deadline(ex.request)
        objective = ex.request.objective_header.decode("latin-1") if ex.request.objective_header else None
        if ex.request.tags_header:  # policies match on them (comma-separated)
            tags = ex.request.tags_header.decode("latin-1").split(",")
            intent = attrs.evolve(intent, tags=frozenset(t.strip() for t in tags if t.strip()))
        own = own_policy(self.router, ex.request.policy_header) if ex.request.policy_header else {}
        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            if intent.stream:
                error = await self._pump(ex, intent, objective, deadline, relay(), own)
            else:
                error = await self._complete(ex, intent, objective, deadline, render, own)
        finally:
            in_flight.dec()
        if error is not None:
            raise error

    async def _complete(
        self, ex: Exchange, intent: RequestIntent, objective: str | None, deadline: float, render: Render, own: Own
    ) -> BaseException | None:
        # A client that leaves cancels this task (the server sees it): the route and its upstream call end.
        response = None
        # An absolute deadline: `move_on_after` is the same scope with a relative one resolved on entry.
        with trio.CancelScope(deadline=trio.current_time() + deadline) as timer:
            response = await self.router.route(intent, objective=objective, client=ex.client, **own)
        if timer.cancelled_caught or response is None:
            return deadline_error(deadline)
        headers = self._metadata_headers(ex, response.metadata)
        headers.append((b"content-type", b"application/json"))
        body = render(response)
        ex.status = 200
        ex.started = True
        await send_response(ex.response, 200, json_bytes(body), headers)
        return None

    async def _pump(
        self, ex: Exchange, intent: RequestIntent, objective: str | None, deadline: float, relay: Relay, own: Own
    ) -> BaseException | None:
        """Open the routed stream and relay it as SSE. Returns an error to answer with if no header went out."""
        idle = self.stream_idle_timeout
        out = ex.response
        with trio.CancelScope(deadline=trio.current_time() + deadline) as timer:
            try:
                async with self.router.stream(intent, objective=objective, client=ex.client, **own) as routed:
                    headers = [*_SSE_HEADERS, *self._metadata_headers(ex, routed.metadata)]
                    # The idle deadline is moved only once it is `slack` behind (never early, at most `slack`
                    # late): moving a cancel scope's deadline for every chunk cost more than writing it.
                    slack = min(idle / 8, 1.0)
                    ex.status = 200
                    # The router's stream opens with its first chunk read: it goes out with the head, one write.
                    chunks = aiter(routed)
                    first = await anext(chunks, None)
                    await out.start(200, headers, (first and relay.event(first)) or b"")
                    ex.started = True
                    timer.deadline = trio.current_time() + idle + slack
                    async for chunk in chunks:
                        event = relay.event(chunk)
                        if event is not None:
                            await out.send(event)
                        if (now := trio.current_time()) + idle > timer.deadline:
                            timer.deadline = now + idle + slack
            except ClientGone:
                ex.disconnected = True
                return None
            except Exception as exc:
                return await self._stream_failed(ex, relay, exc)
            except trio.Cancelled:
                if ex.started and not ex.gone() and not timer.cancel_called:
                    await self._shutting_down(ex, relay)
                raise
        if timer.cancelled_caught:
            if not ex.started:
                return deadline_error(deadline)
            message = f"the upstream sent nothing for {idle:g}s"
            await self._end_stream(ex, relay, HTTPError(504, message, type="timeout_error", code="stream_idle"))
            return None
        try:
            await out.end(relay.tail())
        except ClientGone:
            ex.disconnected = True
        return None

    async def _stream_failed(self, ex: Exchange, relay: Relay, exc: Exception) -> BaseException | None:
        """A routed stream raised: before the headers went out, the error to answer with; after, the
        error event that ends the stream."""
        if not ex.started:
            return exc
        inner = unwrap(exc)
        if isinstance(inner, UpstreamError):
            self.metrics.failed(inner.failure.value)
        else:
            log.error("stream_failed", request_id=ex.request_id, exc_info=inner)
        await self._end_stream(ex, relay, http_error_for(inner))
        return None

    async def _shutting_down(self, ex: Exchange, relay: Relay) -> None:
        """Cancelled from outside (the server's shutdown grace ran out): say so before the end."""
        with trio.move_on_after(1.0) as cleanup:
            cleanup.shield = True
            error = HTTPError(503, "the server is shutting down", type="service_unavailable", code="server_shutdown")
            await self._end_stream(ex, relay, error)

    async def _end_stream(self, ex: Exchange, relay: Relay, error: HTTPError) -> None:
        ex.stream_error = error.code or error.type
        body = relay.failed(error)
        try:
            with trio.move_on_after(5) as cs:  # a client that stopped reading cannot hold us here
                await ex.response.end(body)
            if cs.cancelled_caught:
                ex.disconnected = True
        except ClientGone:
            ex.disconnected = True

    async def _models(self, ex: Exchange, _: str) -> None:
        self._authorize_client(ex)
        await self._reply(ex, 200, models_json(self.router.models()))

    # -- health and metrics ---------------------------------------------------------------------------

    async def _health(self, ex: Exchange, _: str) -> None:
        await self._reply(ex, 200, {"status": "ok"})

    async def _ready(self, ex: Exchange, _: str) -> None:
        if self.router.ready():
            store = self._store_status()
            health = self._store_health()
            failing = health is not None and health["failing"]
            if (store is not None and not store["up"]) or failing:  # still serving (local shares): say so
                down: dict[str, Any] = {"status": "degraded", "store": store if store is not None else health}
                if store is not None and failing:
                    down["store_health"] = health
                await self._reply(ex, 200, down)
                return
            body: dict[str, Any] = {"status": "ready"}
            if store is not None:
                body["store"] = store
            await self._reply(ex, 200, body)
            return
        raise HTTPError(503, "no key can serve requests right now", type="service_unavailable", code="not_ready")

    async def _metrics(self, ex: Exchange, _: str) -> None:
        if self.metrics_require_admin:
            self._authorize_admin(ex)
        ex.status = 200
        ex.started = True
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"x-request-id", ex.request_id.encode())]
        await send_response(ex.response, 200, self.metrics.render(), headers)

    # -- management -----------------------------------------------------------------------------------

    async def _state(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *self.admin.state())

    async def _state_query(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *await state_query(self.router, ex.request.query))

    async def _list_keys(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *self.admin.list_keys())

    async def _add_key(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        body = await self._json_body(ex)
        await self._reply(ex, *await self.admin.add_key(body))

    async def _get_key(self, ex: Exchange, key_id: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *self.admin.get_key(key_id))

    async def _revoke_key(self, ex: Exchange, key_id: str) -> None:
        self._authorize_admin(ex)
        body = await self._json_body(ex, optional=True)
        await self._reply(ex, *await self.admin.revoke_key(key_id, body))

    async def _rotate_key(self, ex: Exchange, key_id: str) -> None:
        self._authorize_admin(ex)
        body = await self._json_body(ex)
        await self._reply(ex, *await self.admin.rotate_key(key_id, body))

    async def _set_key_state(self, ex: Exchange, key_id: str) -> None:
        self._authorize_admin(ex)
        body = await self._json_body(ex)
        await self._reply(ex, *await self.admin.set_key_state(key_id, body))

    async def _list_decisions(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *self.admin.list_decisions(20))

    async def _list_budgets(self, ex: Exchange, _: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *await self.admin.list_budgets())

    def _policies(self, ex: Exchange) -> tuple[PolicyAPI, str]:
        """The policy API and who is asking (the admin token's fingerprint, for the audit)."""
        self._authorize_admin(ex)
        if self.policy_api is None:
            raise HTTPError(404, "this router does not manage policies", code="not_found")
        return self.policy_api, f"admin:{self.admin_token.fingerprint if self.admin_token else '?'}"

    async def _list_policies(self, ex: Exchange, _: str) -> None:
        await self._reply(ex, *self._policies(ex)[0].list())

    async def _post_policies(self, ex: Exchange, _: str) -> None:
        api, who = self._policies(ex)
        await self._reply(ex, *await api.post(await self._json_body(ex), who))

    async def _delete_policy(self, ex: Exchange, policy_id: str) -> None:
        api, who = self._policies(ex)
        await self._reply(ex, *await api.delete(policy_id, who))

    async def _dry_run_policies(self, ex: Exchange, _: str) -> None:
        await self._reply(ex, *await self._policies(ex)[0].dry_run(await self._json_body(ex)))

    async def _policy_audit(self, ex: Exchange, _: str) -> None:
        await self._reply(ex, *self._policies(ex)[0].audit())

    async def _get_decision(self, ex: Exchange, decision_id: str) -> None:
        self._authorize_admin(ex)
        await self._reply(ex, *self.admin.get_decision(decision_id))
