"""One Redis connection pool, driven from trio: redis-py's sync client in worker threads.

Why the sync client in threads rather than redis-py's asyncio client: the asyncio client needs an
asyncio loop, and hosting one beside trio (a guest run, or a bridge) puts a second scheduler on the
request path with its own cancellation rules. A thread per call costs ~50 µs, runs through a
`CapacityLimiter` (bounded: a slow Redis cannot grow threads without limit) and is cancelled the trio way:
every call runs under `fail_after(deadline)` with `abandon_on_cancel=True`, so the caller is never held
past its deadline; the abandoned thread ends at the socket timeout (the same deadline), still holding its
limiter token until then. The deadline starts when the call has its thread, not while it queues for one:
under CPU load (or a burst of more calls than threads) the queue is this process's own delay, and
counting it made a healthy Redis look slow. The queue is bounded by the threads' socket timeouts.
An abandoned call may still have run on the server: callers treat a timeout as "maybe applied" (a
reserve is followed by a release, which is idempotent).

Every failure (refused connection, timeout, a script error) is one `StoreUnavailable`. Whether it flips
`up` to False (until a call succeeds again; each flip logged once, not per call) depends on what it says
about Redis: a connection or script error does, a timeout only for a call made with `slow_is_down` (the
heartbeat's probe). One slow reply under load is not an outage: the request path keeps asking Redis,
and the heartbeat decides when Redis is too slow to be counted on.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog
import trio

from apikeyrouter.errors import ConfigError
from apikeyrouter.store.redis_lua import BUDGETS, HEARTBEAT, REPLAY, REPLAY_SCOPES, RESERVE, SETTLE, SHARE_STATE

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLink", "StoreUnavailable", "redis_client", "redis_failures", "redis_module"]

log = structlog.get_logger("apikeyrouter.store")

T = TypeVar("T")


_redis: list[ModuleType] = []  # redis-py, once a redis store has been opened


def redis_module() -> ModuleType | None:
    """redis-py (an optional extra: only `[store] kind = "redis"` needs it), imported when a redis store is
    first opened rather than with this module: it is ~90 modules and ~7 MiB of RSS that every `serve`
    with another store would hold for nothing. None when it is not installed."""
    if not _redis:
        try:
            _redis.append(importlib.import_module("redis"))
        except ImportError:
            return None
    return _redis[0]


def redis_failures() -> tuple[type[Exception], ...]:
    """What a redis-py call raises when Redis is away or refuses: for `except redis_failures() as exc`
    (evaluated only once something was raised, so only once a client exists and redis-py is loaded)."""
    module = redis_module()
    return (OSError,) if module is None else (module.RedisError, OSError)


def redis_timeouts() -> tuple[type[Exception], ...]:
    """redis-py's socket timeout (a slow Redis, not a missing one); nothing before redis-py is loaded."""
    module = redis_module()
    return () if module is None else (module.TimeoutError,)


def redis_client(url: str, deadline: float) -> redis.Redis:
    """redis-py's sync client for `[store] url`, each socket operation bounded by `deadline` seconds (it
    runs in a worker thread, where the caller's cancel scope cannot reach). A missing redis-py or a
    malformed URL is a ConfigError naming the field; the URL itself is never shown (it may hold a password)."""
    module = redis_module()
    if module is None:
        raise ConfigError(
            "the redis store needs redis-py: pip install 'apikeyrouter[redis]' @ config.store.kind",
            path="config.store.kind",
        )
    try:
        client: redis.Redis = module.Redis.from_url(
            url, socket_timeout=deadline, socket_connect_timeout=deadline, retry_on_timeout=False
        )
    except ValueError as exc:  # redis-py's words about the URL's shape
        raise ConfigError(f"invalid redis url ({exc}) @ config.store.url", path="config.store.url") from None
    return client


class StoreUnavailable(Exception):
    """Redis did not answer in time, refused, or failed the call. `reason` is safe to show (no URL password)."""

    def __init__(self, reason: str, *, maybe_applied: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        # False only when the command cannot have reached Redis (no connection could be made): True for a
        # timeout or a connection lost mid-call, after which Redis may have run it (or may still run it).
        self.maybe_applied = maybe_applied


class _Held:
    """A limiter token taken before the call's deadline started, handed to `trio.to_thread.run_sync` as its
    limiter: trio "acquires" it at once and releases the real token when the thread ends (an abandoned
    thread keeps it until its socket timeout, as with the limiter itself)."""

    def __init__(self, limiter: trio.CapacityLimiter, borrower: object) -> None:
        self.limiter, self.borrower, self.taken = limiter, borrower, False

    async def acquire_on_behalf_of(self, _borrower: object) -> None:
        self.taken = True  # no checkpoint: nothing can cancel between this and the thread's start

    def release_on_behalf_of(self, _borrower: object) -> None:
        self.limiter.release_on_behalf_of(self.borrower)


class RedisLink:
    def __init__(self, url: str, *, deadline: float, max_threads: int = 16) -> None:
        self.deadline = deadline
        self.up = False
        self.last_error: str | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0  # calls that failed on their deadline without marking Redis down (of `failures`)
        self._client = redis_client(url, deadline)
        self._limiter = trio.CapacityLimiter(max_threads)
        # The heartbeat's probe has its own thread: it decides whether Redis is down, so it must never
        # queue behind the request path's calls (which wait for a thread without a deadline).
        self._probe_limiter = trio.CapacityLimiter(1)
        # Script objects send EVALSHA and load the script once when the server does not know it (NOSCRIPT).
        self._reserve = self._client.register_script(RESERVE)
        self._settle = self._client.register_script(SETTLE)
        self._heartbeat = self._client.register_script(HEARTBEAT)
        self._share = self._client.register_script(SHARE_STATE)
        self._replay = self._client.register_script(REPLAY)
        self._replay_scopes = self._client.register_script(REPLAY_SCOPES)
        self._budgets = self._client.register_script(BUDGETS)

    async def _call(self, fn: Callable[[], T], *, slow_is_down: bool = False) -> T:
        """`fn` in a worker thread, its answer within `deadline` of having the thread. `slow_is_down`: a
        timeout marks Redis down (the heartbeat); otherwise it fails this call only."""
        self.calls += 1
        borrower = object()
        limiter = self._probe_limiter if slow_is_down else self._limiter
        await limiter.acquire_on_behalf_of(borrower)  # the queue for a thread: not Redis's time
        held = _Held(limiter, borrower)
        if not self.up and not slow_is_down and self.last_error is not None:
            # Redis went down while this call queued: not sent (the caller falls back at once, as if it
            # had seen the link down), rather than each queued call waiting out its deadline in turn.
            limiter.release_on_behalf_of(borrower)
            raise StoreUnavailable(self.last_error, maybe_applied=False)
        try:
            with trio.fail_after(self.deadline):
                result = await trio.to_thread.run_sync(
                    fn, limiter=cast(trio.CapacityLimiter, held), abandon_on_cancel=True
                )
        except trio.TooSlowError:
            self._fail(f"no answer within {self.deadline:g} s", down=slow_is_down)
        except redis_timeouts() as exc:  # the socket timeout: slow, as above
            self._fail(f"{type(exc).__name__}: {_first_line(exc)}", down=slow_is_down)
        except redis_failures() as exc:
            self._fail(f"{type(exc).__name__}: {_first_line(exc)}", down=True, maybe_applied=_maybe_sent(exc))
        finally:
            if not held.taken:  # cancelled before trio took the token over: it is still ours
                limiter.release_on_behalf_of(borrower)
        if not self.up:
            log.info("redis_up", calls=self.calls)
        self.up, self.last_error = True, None
        return result

    def _fail(self, reason: str, *, down: bool, maybe_applied: bool = True) -> Any:
        self.failures += 1
        if down:
            if self.up or self.last_error is None:
                log.warning("redis_down", reason=reason)
            self.up, self.last_error = False, reason
        else:
            self.slow += 1  # Redis still counts as up: `last_error` says why it is down, and it is not
            log.info("redis_slow", reason=reason)
        raise StoreUnavailable(reason, maybe_applied=maybe_applied)

    async def reserve(self, args: list[str]) -> list[Any]:
        result: list[Any] = await self._call(functools.partial(self._reserve, keys=[], args=args))
        return result

    async def settle(self, args: list[str]) -> None:
        await self._call(functools.partial(self._settle, keys=[], args=args))

    async def settle_many(self, batch: list[list[str]]) -> None:
        """Many settlements in one pipelined round trip (one transaction-free batch of EVALSHAs).

        Plain EVALSHAs rather than redis-py's Script objects in the pipeline: those check SCRIPT EXISTS
        first, a second round trip per batch. A Redis that forgot the script (restarted) answers NOSCRIPT
        to every one of them, so none ran: load it and send the batch again."""
        sha = self._settle.sha

        def run() -> None:
            for attempt in (1, 2):
                pipe = self._client.pipeline(transaction=False)
                for args in batch:
                    pipe.evalsha(sha, 0, *args)
                try:
                    pipe.execute()
                    return
                except _no_script():
                    if attempt == 2:
                        raise
                    self._client.script_load(SETTLE)

        await self._call(run)

    async def replay(
        self, instance: str, key_id: str, entries: list[tuple[int, int]], counts: tuple[bool, bool] = (False, False)
    ) -> None:
        """`counts`: the key has an rpd, a tokens_per_month limit (their buckets count the entries too)."""
        args = [instance, key_id, str(len(entries))]
        for age_ms, tokens in entries:
            args += [str(age_ms), str(tokens)]
        args += ["1" if c else "0" for c in counts]
        await self._call(functools.partial(self._replay, keys=[], args=args))

    async def replay_scopes(self, instance: str, entries: list[tuple[str, int, int]]) -> None:
        """(scope, age_ms, tokens) admitted on the local share, into the clients' and teams' windows."""
        args = [instance, str(len(entries))]
        for scope, age_ms, tokens in entries:
            args += [scope, str(age_ms), str(tokens)]
        await self._call(functools.partial(self._replay_scopes, keys=[], args=args))

    async def budgets(self, periods: list[tuple[str, str]]) -> list[tuple[int, int]]:
        """(spent, held) in nano-dollars of each (budget id, period argument), in one script call."""
        args = [str(len(periods))]
        for bid, period_arg in periods:
            args += [bid, period_arg]
        flat = await self._call(functools.partial(self._budgets, keys=[], args=args))
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def heartbeat(self, instance: str, ttl_ms: int, *, fresh: bool) -> tuple[int, int]:
        args = [instance, str(ttl_ms), "1" if fresh else "0"]
        call = functools.partial(self._heartbeat, keys=[], args=args)
        live, reclaimed, _ = await self._call(call, slow_is_down=True)
        return int(live), int(reclaimed)

    async def share(self, key_id: str, what: str, value: str, ttl_ms: int) -> bool:
        """Write a bench or lifecycle for every instance: True when Redis did not know it yet."""
        changed = await self._call(functools.partial(self._share, keys=[], args=[key_id, what, value, str(ttl_ms)]))
        return bool(changed)

    def subscriber(self, channel: str) -> Callable[[float], dict[str, Any] | None]:
        """A blocking `next(wait_s)` over `channel`'s messages (run it in a thread): a message, or None."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        subscribed = False

        def next_message(wait_s: float) -> dict[str, Any] | None:
            nonlocal subscribed
            try:
                if not subscribed:
                    pubsub.subscribe(channel)
                    subscribed = True
                found: dict[str, Any] | None = pubsub.get_message(timeout=wait_s)
            except redis_failures() as exc:
                subscribed = False  # subscribe again on the next connection
                pubsub.reset()
                raise StoreUnavailable(f"{type(exc).__name__}: {_first_line(exc)}") from None
            return found

        return next_message

    async def publish(self, channel: str, message: str) -> None:
        await self._call(functools.partial(self._client.publish, channel, message))

    def close(self) -> None:
        self._client.close()


def _maybe_sent(exc: BaseException) -> bool:
    """False when no connection could be made (refused, unreachable): the command never left this process.
    redis-py words a failed connect "Error N connecting to host:port"; anything else may have been sent."""
    module = redis_module()
    connect_error = () if module is None else module.ConnectionError
    return not (isinstance(exc, connect_error) and " connecting to " in str(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _no_script() -> type[Exception]:
    """redis-py's NoScriptError (a client exists, so redis-py is loaded)."""
    module = redis_module()
    assert module is not None
    error: type[Exception] = module.exceptions.NoScriptError
    return error
