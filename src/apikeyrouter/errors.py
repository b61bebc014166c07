"""The one error tree of apikeyrouter.

    ApiKeyRouterError
    ├── ConfigError                 bad configuration: names the field and its path
    ├── ActorError                  the kernel
    │   ├── MailboxFull             tell_nowait on a full mailbox
    │   ├── ActorStopped            the actor stopped (or was never running) before it replied
    │   └── ActorCrashed            the handler raised; `cause` is the original exception
    ├── SupervisorEscalation        a supervisor exceeded its restart intensity
    ├── RouterNotRunning            a router call outside `async with ApiKeyRouter()`
    ├── RoutingError                we decided not to (or could not) send the request
    │   ├── NoKeyAvailable          no key can serve before the deadline; `retry_at` says when one might
    │   ├── UnknownModel            no registered key serves the requested model
    │   ├── UnknownKey / UnknownProvider
    │   ├── BudgetExceeded          a hard budget would be overspent
    │   └── ClientRateLimited       the client's (or its team's) rpm/tpm is used up; `retry_at` says when not
    ├── InvalidRequest              the caller's request is malformed (never sent upstream)
    │   └── PolicyRejected          a policy (or a change to the policies) failed validation; `errors` lists why
    ├── StoreError                  the state store cannot be opened (corrupt, newer schema) or written
    ├── DebugChannelError           the debug channel's Unix socket could not be bound or used
    │   ├── DebugChannelUnavailable nothing listens at the socket, or permissions forbid connecting
    │   ├── DebugSocketInUse        a live process already listens where we were asked to bind
    │   └── DebugRequestError       the server answered with an error object (`code` says which)
    └── UpstreamError               the provider answered with (or failed with) a classified failure
        ├── MalformedResponse       the provider's body could not be understood
        └── StreamInterrupted       a stream broke after bytes reached the caller

"We stopped it" (RoutingError, cancellation) is kept apart from "it broke" (UpstreamError).
No error message ever contains key material: errors carry key *ids* and fingerprints only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from apikeyrouter.domain.failures import FailureClass
    from apikeyrouter.domain.refusal import Refusal
    from apikeyrouter.domain.signal import QuotaSignal

__all__ = [
    "ActorCrashed",
    "ActorError",
    "ActorStopped",
    "ApiKeyRouterError",
    "BudgetExceeded",
    "ClientRateLimited",
    "ConfigError",
    "DebugChannelError",
    "DebugChannelUnavailable",
    "DebugRequestError",
    "DebugSocketInUse",
    "InvalidRequest",
    "MailboxFull",
    "MalformedResponse",
    "NoKeyAvailable",
    "PolicyRejected",
    "RouterNotRunning",
    "RoutingError",
    "StoreError",
    "StreamInterrupted",
    "SupervisorEscalation",
    "UnknownKey",
    "UnknownModel",
    "UnknownProvider",
    "UpstreamError",
]


class ApiKeyRouterError(Exception):
    """Base of every error apikeyrouter raises on purpose."""


class ConfigError(ApiKeyRouterError):
    def __init__(self, message: str, *, path: str = "config", errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.errors = errors or (message,)


class ActorError(ApiKeyRouterError):
    def __init__(self, message: str, *, actor: str) -> None:
        super().__init__(message)
        self.actor = actor


class MailboxFull(ActorError):
    def __init__(self, actor: str, capacity: int) -> None:
        super().__init__(f"mailbox of {actor} is full ({capacity} messages)", actor=actor)
        self.capacity = capacity


class ActorStopped(ActorError):
    def __init__(self, actor: str, reason: str = "stopped") -> None:
        super().__init__(f"actor {actor} {reason} before replying", actor=actor)
        self.reason = reason


class ActorCrashed(ActorError):
    def __init__(self, actor: str, cause: BaseException) -> None:
        super().__init__(f"actor {actor} crashed: {type(cause).__name__}: {cause}", actor=actor)
        self.cause = cause


class SupervisorEscalation(ApiKeyRouterError):
    def __init__(self, supervisor: str, child: str, restarts: int, period: float) -> None:
        super().__init__(
            f"supervisor {supervisor} gave up: child {child} needed more than {restarts} restarts within {period:g}s"
        )
        self.supervisor = supervisor
        self.child = child
        self.restarts = restarts
        self.period = period


class RouterNotRunning(ApiKeyRouterError):
    def __init__(self, operation: str = "this call") -> None:
        super().__init__(
            f"{operation} needs a running router: use `async with ApiKeyRouter() as router:` "
            "or `async with open_router(config) as router:`"
        )


class RoutingError(ApiKeyRouterError):
    pass


class NoKeyAvailable(RoutingError):
    """No key can serve the request before the caller's deadline.

    `retry_at` is the earliest trio time a key may be usable (None when none ever will be without an
    operator), `retry_after` the same as seconds from when the error was raised, `refusals` the typed
    answers of the keys (and budgets) asked to reserve, and `reasons` maps each key id to why it was
    excluded, as text (the router's exclusions plus the refusals rendered).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_at: float | None = None,
        retry_after: float | None = None,
        reasons: dict[str, str] | None = None,
        refusals: tuple[Refusal, ...] = (),
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.retry_after = retry_after
        self.reasons = dict(reasons or {})
        self.refusals = tuple(refusals)


class UnknownModel(RoutingError):
    def __init__(self, model: str) -> None:
        super().__init__(f"no registered key serves model {model!r}")
        self.model = model


class UnknownKey(RoutingError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")
        self.key_id = key_id


class UnknownProvider(RoutingError):
    def __init__(self, provider: str) -> None:
        super().__init__(f"no provider with id {provider!r}")
        self.provider = provider


class BudgetExceeded(RoutingError):
    """A hard budget would be overspent. `budget` is its id ("global", "provider:openai", "key:k1");
    `refusals` the typed budget refusals the request met (the first names `budget`)."""

    def __init__(self, message: str, *, budget: str, refusals: tuple[Refusal, ...] = ()) -> None:
        super().__init__(message)
        self.budget = budget
        self.refusals = tuple(refusals)


class ClientRateLimited(RoutingError):
    """The caller's own limit, not a key's: `scope` ("client:acme", "team:search") has no room in its
    rpm or tpm window before the deadline. `retry_at` (trio time) / `retry_after` (seconds): when it has."""

    def __init__(
        self, message: str, *, scope: str, retry_at: float | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_at = retry_at
        self.retry_after = retry_after


class InvalidRequest(ApiKeyRouterError):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PolicyRejected(InvalidRequest):
    """A policy change failed validation; `errors`: every problem as "policies[i].field: message"."""

    def __init__(self, errors: Sequence[str], *, param: str = "policies") -> None:
        super().__init__(f"invalid {param}: " + "; ".join(errors), param=param)
        self.errors = tuple(errors)


class UpstreamError(ApiKeyRouterError):
    """A classified failure from a provider. Messages are scrubbed of key material by adapters."""

    def __init__(
        self,
        message: str,
        *,
        failure: FailureClass,
        status: int | None = None,
        provider: str | None = None,
        key_id: str | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        error_type: str | None = None,
        signal: QuotaSignal | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.signal = signal
        self.failure = failure
        self.status = status
        self.provider = provider
        self.key_id = key_id
        self.retry_after = retry_after
        self.code = code
        self.error_type = error_type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(failure={self.failure.value!r}, status={self.status!r}, "
            f"provider={self.provider!r}, key_id={self.key_id!r}, message={self.message!r})"
        )


class MalformedResponse(UpstreamError):
    pass


class StreamInterrupted(UpstreamError):
    pass


class DebugChannelError(ApiKeyRouterError):
    """The debug channel could not be set up or used. `path` is the socket path involved."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class DebugChannelUnavailable(DebugChannelError):
    """No process listens at `path`, or we may not connect to it. `reason`: missing, refused, forbidden, ..."""

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message, path=path)
        self.reason = reason


class DebugSocketInUse(DebugChannelError):
    """A live process already listens at `path`: we refuse to take its socket away."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"another process is already serving a debug channel at {path}; stop it or choose another socket path",
            path=path,
        )


class DebugRequestError(DebugChannelError):
    """The debug server answered `{"ok": false, "error": {"code", "message"}}` (or something unreadable)."""

    def __init__(self, message: str, *, path: str, code: str) -> None:
        super().__init__(message, path=path)
        self.code = code


class StoreError(ApiKeyRouterError):
    """The state store cannot be used: `path` names the file (or address), the message says why in one line."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
