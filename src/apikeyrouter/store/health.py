"""Whether the store is failing, and the counts behind it, for `/health/ready` and `/metrics`.

Three things can fail, and each is said: the writer's backend raising on a write (SQLite: a full disk, a
locked or read-only file; the writer tries again with backoff and drops nothing, but nothing is durable
meanwhile), the Redis store keeping records it could not write (and, past `keep_rows`, dropping the oldest
history rows), and the shared limits' Redis calls (rate limits on local shares, hard budgets closed).
Every reason is a one-line exception text as the store logs it: never a URL (it may hold a password).
"""

from __future__ import annotations

from typing import Any

from apikeyrouter.store.redis_shared import SharedLimits
from apikeyrouter.store.redis_store import RedisStore
from apikeyrouter.store.sqlite import SqliteStore
from apikeyrouter.store.writer import StoreState

__all__ = ["store_health"]


def store_health(state: StoreState, shared: SharedLimits | None, decisions_dropped: int = 0) -> dict[str, Any]:
    """`failing` (and why, in `errors`) plus counters that only grow while the process runs.
    `decisions_dropped`: decision rows the request path dropped because the writer's table was full
    (counted in `dropped_rows` with the Redis store's own drops)."""
    errors: list[str] = []
    if state.last_error is not None:
        errors.append(f"writes failing: {state.last_error}")
    write_failures, dropped_rows = state.failures, decisions_dropped
    backend = state.backend
    if isinstance(backend, RedisStore):
        write_failures += backend.failures
        dropped_rows += backend.dropped_rows
        if backend.last_error is not None:
            errors.append(f"records kept, not written: {backend.last_error}")
    kind = "redis" if isinstance(backend, RedisStore) else "sqlite" if isinstance(backend, SqliteStore) else "memory"
    out: dict[str, Any] = {
        "kind": kind,
        "failing": False,
        "errors": errors,
        "write_failures": write_failures,
        "dropped_rows": dropped_rows,
        "decision_rows_dropped": decisions_dropped,
        "pending_rows": _pending_rows(state),
    }
    if shared is not None:
        if not shared.link.up:
            errors.append(f"redis unavailable: {shared.link.last_error or 'not connected'}")
        out["redis_call_failures"] = shared.link.failures
        out["redis_slow_calls"] = shared.link.slow  # of those, the timeouts that did not mark Redis down
        out["shared_dropped"] = shared.dropped  # settlements past the retry queue, benches not shared
    out["failing"] = bool(errors)
    return out


def _pending_rows(state: StoreState) -> int:
    """History rows not written yet: put by actors and not taken (`Pending`), taken back from a crashed
    instance (`rows`), and those of the batch being written (held while its write fails and is retried)."""
    writing = len(state.writing.rows) if state.writing is not None else 0
    return len(state.pending.rows) + len(state.rows) + writing
