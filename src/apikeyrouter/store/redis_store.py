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

Each `write` is one MULTI/EXEC, through redis-py's sync client in a worker thread, one call at a time,
like SqliteStore. Redis going away is a mode the instance runs through (redis_shared.py: budgets fail
closed, routing goes on), so the store must not hold routing up either: a write that fails is kept here,
not raised (a raise would make the writer keep it, and past its `max_rows` stop reading, which pauses
every key actor). Kept: the newest value of each record (one per record, however long the outage) and
the newest `keep_rows` rows; older rows beyond that are dropped, counted (`dropped_rows`) and logged once
per outage. While Redis is away the store tries again at most once a second, then writes all it kept in
one transaction. `open` with Redis down logs a warning and starts fresh rather than refusing to start.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import structlog
import trio

from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, StateQuery, TransitionRow
from apikeyrouter.errors import StoreError
from apikeyrouter.store.backend import Batch, RecordId
from apikeyrouter.store.codec import RECORD_TYPES, decode, encode, shift_row
from apikeyrouter.store.redis_link import redis_client, redis_failures
from apikeyrouter.store.redis_lua import PREFIX

__all__ = ["RedisStore", "records_key", "trail_key"]

log = structlog.get_logger("apikeyrouter.store")

T = TypeVar("T")

_TRAILS: dict[type[Any], str] = {TransitionRow: "transitions", DecisionRow: "decisions", BudgetRow: "budgets"}
_ROW_TYPES: dict[str, type[Any]] = {trail: t for t, trail in _TRAILS.items()}
_PAGE = 500  # rows read per round trip while a query filters
_TIMEOUT_S = 2.0  # one store call (a batch may be large)
_RETRY_S = 1.0  # while Redis is away: how often a write tries again


def records_key(instance_id: str) -> str:
    return f"{PREFIX}rec:{instance_id}"


def trail_key(trail: str) -> str:
    return f"{PREFIX}t:{trail}"


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, instance_id: str, *, retention: int = 100_000, keep_rows: int = 100_000) -> None:
        self._client = redis_client(url, _TIMEOUT_S)
        self.instance_id = instance_id
        self.retention = retention
        self.keep_rows = keep_rows
        self._limiter = trio.CapacityLimiter(1)
        self._wall_offset = 0.0
        self._seq = itertools.count(1)
        self._records: dict[RecordId, Any] = {}  # kept while Redis is away: the newest of each
        self._rows: collections.deque[HistoryRow] = collections.deque()
        self._retry_at = 0.0  # trio time: no write tried before (Redis was away); 0.0: no outage
        self.writes = 0  # batches committed
        self.failures = 0  # writes that failed (what they held is kept for the next)
        self.dropped_rows = 0  # rows dropped, oldest first, past `retention` kept during an outage
        self.last_error: str | None = None  # why the last write failed, until one succeeds (no URL in it)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def open(self, wall_offset: float) -> dict[RecordId, Any]:
        self._wall_offset = wall_offset
        try:
            stored = await self._run(lambda: self._client.hgetall(records_key(self.instance_id)))
        except redis_failures() as exc:
            log.warning("redis_store_not_restored", instance=self.instance_id, reason=_first_line(exc))
            return {}
        records: dict[RecordId, Any] = {}
        for field, value in stored.items():
            kind, _, rid = _text(field).partition("/")
            if kind in RECORD_TYPES:  # kinds a later version added are kept, not read
                records[kind, rid] = decode(kind, json.loads(value), wall_offset)
        return records

    async def write(self, batch: Batch) -> None:
        self._keep(batch)
        if trio.current_time() < self._retry_at:
            return  # Redis was away a moment ago: kept for the next try
        pending = Batch(dict(self._records), tuple(self._rows))
        try:
            await self._run(lambda: self._write_sync(pending))
        except redis_failures() as exc:
            self.failures += 1
            self.last_error = _first_line(exc)
            if self._retry_at == 0.0:
                log.warning("redis_store_write_failed", reason=_first_line(exc), kept=len(pending))
            self._retry_at = trio.current_time() + _RETRY_S
            return
        if self._retry_at:
            log.info("redis_store_written", records=len(pending.records), rows=len(pending.rows))
        self._retry_at = 0.0
        self.last_error = None
        for rid in pending.records:  # those changed again meanwhile stay, with their newer value
            if self._records.get(rid) is pending.records[rid]:
                del self._records[rid]
        for _ in pending.rows:
            self._rows.popleft()

    def _keep(self, batch: Batch) -> None:
        self._records.update(batch.records)
        self._rows.extend(batch.rows)
        over = len(self._rows) - self.keep_rows
        if over > 0:
            if self.dropped_rows == 0 or self._retry_at == 0.0:
                log.error("redis_store_rows_dropped", dropped=over, reason="redis away; the oldest rows go first")
            self.dropped_rows += over
            for _ in range(over):
                self._rows.popleft()

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
        try:
            return await self._run(lambda: self._query_sync(query))
        except redis_failures() as exc:  # one line, never the URL (it may hold a password)
            raise StoreError(f"the redis store is unavailable: {_first_line(exc)}", path="config.store.url") from None

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
        self._retry_at = 0.0
        await self.write(Batch())  # what an outage left here: one last try
        if self._records or self._rows:
            log.error("redis_store_not_written", records=len(self._records), rows=len(self._rows))
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
