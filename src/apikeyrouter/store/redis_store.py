"""`RedisStore`: the `StateStore` of `[store] kind = "redis"`, so a restarted instance restores its keys.

Records are this instance's own: a key actor's record holds its local quota rings, learned limits,
throttle and reset times, breaker and lifecycle as this instance saw them, and the budget ledger its
local holds and spend; another instance's view of the same key is a different record. So they live
under the instance's id, `akr:rec:<I>` (a HASH: "kind/id" -> the record as JSON, wall-clock times,
fingerprints only, as in SQLite: codec.py). A restart with the same `instance_id` finds them; a new id
starts fresh (what is shared on Redis still applies to it: windows, benches, lifecycles, budgets).

The history trails are the fleet's, one per trail, so `/state/query` on any instance shows every
instance's rows: `akr:t:transitions`, `akr:t:decisions`, `akr:t:budgets`, each a ZSET scored by the
row's wall-clock time, its member the row as JSON with the writing instance and a sequence number
(rows that are otherwise equal stay two rows). Transitions are all kept (the audit trail); decisions
and budget rows keep the newest `retention`.

Each `write` is one MULTI/EXEC (all or nothing: the writer keeps a failed batch and writes it again),
through redis-py's sync client in a worker thread, one call at a time, like SqliteStore. `open` with
Redis down logs a warning and starts fresh rather than refusing to start: the instance runs degraded
(redis_shared.py), as it would if Redis went away a moment later.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import structlog
import trio

from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, StateQuery, TransitionRow
from apikeyrouter.errors import ConfigError
from apikeyrouter.store.backend import Batch, RecordId
from apikeyrouter.store.codec import RECORD_TYPES, decode, encode, shift_row
from apikeyrouter.store.redis_lua import PREFIX

try:
    import redis
except ImportError:  # the optional extra; RedisStore says how to install it
    redis = None  # type: ignore[assignment]

__all__ = ["RedisStore", "records_key", "trail_key"]

log = structlog.get_logger("apikeyrouter.store")

T = TypeVar("T")

_TRAILS: dict[type[Any], str] = {TransitionRow: "transitions", DecisionRow: "decisions", BudgetRow: "budgets"}
_ROW_TYPES: dict[str, type[Any]] = {trail: t for t, trail in _TRAILS.items()}
_PAGE = 500  # rows read per round trip while a query filters
_TIMEOUT_S = 5.0  # one store call (a batch may be large); the writer retries a failed write


def records_key(instance_id: str) -> str:
    return f"{PREFIX}rec:{instance_id}"


def trail_key(trail: str) -> str:
    return f"{PREFIX}t:{trail}"


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, instance_id: str, *, retention: int = 100_000) -> None:
        if redis is None:
            raise ConfigError(
                "the redis store needs redis-py: pip install 'apikeyrouter[redis]' @ config.store.kind",
                path="config.store.kind",
            )
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S, retry_on_timeout=False
            )
        except ValueError as exc:  # redis-py's words about the URL's shape; the URL itself is never shown
            raise ConfigError(f"invalid redis url ({exc}) @ config.store.url", path="config.store.url") from None
        self.instance_id = instance_id
        self.retention = retention
        self._limiter = trio.CapacityLimiter(1)
        self._wall_offset = 0.0
        self._seq = itertools.count(1)
        self.writes = 0  # batches committed

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def open(self, wall_offset: float) -> dict[RecordId, Any]:
        self._wall_offset = wall_offset
        try:
            stored = await self._run(lambda: self._client.hgetall(records_key(self.instance_id)))
        except (redis.RedisError, OSError) as exc:
            log.warning("redis_store_not_restored", instance=self.instance_id, reason=_first_line(exc))
            return {}
        records: dict[RecordId, Any] = {}
        for field, value in stored.items():
            kind, _, rid = _text(field).partition("/")
            if kind in RECORD_TYPES:  # kinds a later version added are kept, not read
                records[kind, rid] = decode(kind, json.loads(value), wall_offset)
        return records

    async def write(self, batch: Batch) -> None:
        await self._run(lambda: self._write_sync(batch))

    def _write_sync(self, batch: Batch) -> None:
        offset = self._wall_offset
        pipe = self._client.pipeline(transaction=True)
        if batch.records:
            mapping: dict[str | bytes, str | bytes] = {
                f"{kind}/{rid}": json.dumps(encode(record, offset), separators=(",", ":"))
                for (kind, rid), record in batch.records.items()
            }
            pipe.hset(records_key(self.instance_id), mapping=mapping)  # type: ignore[arg-type]
        trails: dict[str, dict[str, float]] = {}
        for row in batch.rows:
            wall = shift_row(row, offset)
            doc = {"i": self.instance_id, "n": next(self._seq), "row": _row_json(wall)}
            trails.setdefault(_TRAILS[type(row)], {})[json.dumps(doc, separators=(",", ":"))] = wall.at
        for trail, members in trails.items():
            pipe.zadd(trail_key(trail), members)
            if trail != "transitions":
                pipe.zremrangebyrank(trail_key(trail), 0, -self.retention - 1)
        pipe.execute()
        self.writes += 1

    async def query(self, query: StateQuery) -> list[HistoryRow]:
        return await self._run(lambda: self._query_sync(query))

    def _query_sync(self, query: StateQuery) -> list[HistoryRow]:
        """Newest first between `since` and `until`, a page at a time until `limit` rows matched."""
        offset = self._wall_offset
        high = "+inf" if query.until is None else repr(query.until + offset)
        low = "-inf" if query.since is None else repr(query.since + offset)
        found: list[HistoryRow] = []
        start = 0
        while len(found) < query.limit:
            page = self._client.zrevrangebyscore(trail_key(query.trail), high, low, start=start, num=_PAGE)
            for member in page:
                row = shift_row(_row(query.trail, json.loads(_text(member))["row"]), -offset)
                if query.matches(row):
                    found.append(row)
                    if len(found) == query.limit:
                        break
            if len(page) < _PAGE:
                break
            start += _PAGE
        return found

    async def close(self) -> None:
        await self._run(self._client.close)


def _row_json(row: HistoryRow) -> dict[str, Any]:
    doc = attrs.asdict(row)
    if isinstance(row, BudgetRow):
        doc["amount"] = str(row.amount)
    return doc


def _row(trail: str, doc: dict[str, Any]) -> HistoryRow:
    if trail == "budgets":
        doc = {**doc, "amount": Decimal(doc["amount"])}
    row: HistoryRow = _ROW_TYPES[trail](**doc)
    return row


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
