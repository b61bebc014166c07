"""How the router's error tree becomes an HTTP answer in the OpenAI error shape.

The table, in one place:

    InvalidRequest                         400 invalid_request_error  (param names the field)
    UnknownModel                           404 invalid_request_error  code model_not_found
    UnknownKey                             404 not_found_error        code key_not_found
    UnknownProvider                        400 invalid_request_error  param provider, code provider_not_found
    NoKeyAvailable                         503 service_unavailable    code no_key_available, Retry-After
        ... every key rate-limited         429 rate_limit_error       code rate_limit_exceeded, Retry-After
    BudgetExceeded                         429 insufficient_quota     code budget_exceeded
    ClientRateLimited                      429 rate_limit_error       code client_rate_limited, Retry-After
    UpstreamError, caller's fault          upstream status (400 by default), upstream type/code/message
      (bad_request, context_length, content_policy)
    UpstreamError, timeout                 504 upstream_error         code timeout
    UpstreamError, anything else           502 upstream_error         code <failure class>
    RouterNotRunning / ActorError          503 service_unavailable    code router_unavailable
    ConfigError (e.g. POST /keys)          400 invalid_request_error
    StoreError (e.g. /state/query, Redis away) 503 service_unavailable code store_unavailable
    anything else                          500 server_error           (details only in the log)

Messages never carry key material: adapters scrub upstream messages, and `scrub` redacts anything that
still looks like a credential before it leaves the process.
"""

from __future__ import annotations

import math

import trio

from apikeyrouter.domain.failures import DEFAULT_ACTIONS, FailureClass
from apikeyrouter.errors import (
    ActorError,
    BudgetExceeded,
    ClientRateLimited,
    ConfigError,
    InvalidRequest,
    NoKeyAvailable,
    RouterNotRunning,
    StoreError,
    UnknownKey,
    UnknownModel,
    UnknownProvider,
    UpstreamError,
)
from apikeyrouter.proxy._http import HTTPError
from apikeyrouter.secret import redact

__all__ = ["http_error_for", "retry_after_seconds", "scrub", "unwrap"]


_CALLER_FAULT_CODES = {
    FailureClass.CONTEXT_LENGTH: "context_length_exceeded",
    FailureClass.CONTENT_POLICY: "content_policy_violation",
}

# Reason strings a router gives for a key benched by rate limiting (NoKeyAvailable.reasons values).
_RATE_LIMIT_WORDS = ("rate_limited", "rate limited", "rate-limited", "throttled", "rpm", "tpm")


def scrub(message: str) -> str:
    """Anything credential-shaped out of a message leaving the process (the same rules adapters apply)."""
    return redact(message)


def unwrap(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (a router's nurseries add them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def retry_after_seconds(exc: NoKeyAvailable) -> int | None:
    """Whole seconds for `Retry-After` (rounded up, at least 1), or None when nobody knows."""
    seconds = exc.retry_after
    if seconds is None and exc.retry_at is not None:
        seconds = exc.retry_at - trio.current_time()
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(1, math.ceil(seconds))


def _all_rate_limited(reasons: dict[str, str]) -> bool:
    # The router reports reasons as text today; this reads them conservatively (every key must say so).
    return bool(reasons) and all(any(w in r.lower() for w in _RATE_LIMIT_WORDS) for r in reasons.values())


def http_error_for(exc: BaseException) -> HTTPError:
    """Map an exception from the router (or from our own parsing) to the answer the client gets."""
    exc = unwrap(exc)
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, InvalidRequest):
        return HTTPError(400, scrub(str(exc)), param=exc.param)
    if isinstance(exc, UnknownModel):
        return HTTPError(
            404,
            f"The model '{exc.model}' does not exist or no configured key serves it",
            param="model",
            code="model_not_found",
        )
    if isinstance(exc, UnknownKey):
        return HTTPError(404, f"no key with id '{exc.key_id}'", type="not_found_error", code="key_not_found")
    if isinstance(exc, UnknownProvider):
        return HTTPError(400, f"no provider with id '{exc.provider}'", param="provider", code="provider_not_found")
    if isinstance(exc, NoKeyAvailable):
        seconds = retry_after_seconds(exc)
        headers = [(b"retry-after", str(seconds).encode())] if seconds is not None else []
        if _all_rate_limited(exc.reasons):
            return HTTPError(429, scrub(str(exc)), type="rate_limit_error", code="rate_limit_exceeded", headers=headers)
        return HTTPError(503, scrub(str(exc)), type="service_unavailable", code="no_key_available", headers=headers)
    if isinstance(exc, BudgetExceeded):
        return HTTPError(429, scrub(str(exc)), type="insufficient_quota", code="budget_exceeded")
    if isinstance(exc, ClientRateLimited):
        after = None if exc.retry_after is None else max(1, math.ceil(exc.retry_after))
        headers = [(b"retry-after", str(after).encode())] if after is not None else []
        return HTTPError(429, scrub(str(exc)), type="rate_limit_error", code="client_rate_limited", headers=headers)
    if isinstance(exc, UpstreamError):
        return _upstream(exc)
    if isinstance(exc, RouterNotRunning | ActorError):
        return HTTPError(503, "the router is not running", type="service_unavailable", code="router_unavailable")
    if isinstance(exc, ConfigError):
        return HTTPError(400, scrub(str(exc)))
    if isinstance(exc, StoreError):  # the store cannot answer now (Redis away): the caller may retry
        return HTTPError(503, scrub(str(exc)), type="service_unavailable", code="store_unavailable")
    return HTTPError(500, "internal error in apikeyrouter (see the server log)", type="server_error")


def _upstream(exc: UpstreamError) -> HTTPError:
    action = DEFAULT_ACTIONS.get(exc.failure)
    if action is not None and action.caller_fault:
        # The caller's own mistake: pass it through as the provider said it, so clients see what they'd
        # have seen talking to the provider directly.
        status = exc.status if exc.status is not None and 400 <= exc.status < 500 else 400
        return HTTPError(
            status,
            scrub(exc.message),
            type=exc.error_type or "invalid_request_error",
            code=exc.code or _CALLER_FAULT_CODES.get(exc.failure),
        )
    where = f" ({exc.provider})" if exc.provider else ""
    if exc.failure is FailureClass.TIMEOUT:
        return HTTPError(
            504, f"the upstream provider{where} timed out on every attempt", type="upstream_error", code="timeout"
        )
    # Not the caller's fault: the upstream's own text may describe our keys, so it stays in our log.
    return HTTPError(
        502,
        f"the upstream provider{where} failed on every attempt ({exc.failure.value})",
        type="upstream_error",
        code=exc.failure.value,
    )
