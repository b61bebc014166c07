"""`SqliteStore`: the standalone process's default store, stdlib `sqlite3` in a worker thread.

One connection, used only under a `CapacityLimiter(1)` through `trio.to_thread.run_sync`, so one
statement runs at a time and the event loop never waits on the disk. The file is in WAL mode with
`synchronous = NORMAL`: a committed write survives the process being killed (`kill -9`), and may be
lost only with the machine itself (power loss), which is the usual trade for a write-heavy log.

Each `write` is one `BEGIN IMMEDIATE` transaction: the latest value of every changed record (an
upsert into `records`, keyed by kind and id, the value as JSON in wall-clock time) and the new rows
of the append-only trails (`transitions`, `decisions`, `budget_events`). `decisions` and
`budget_events` keep the newest `retention` rows; `transitions` keeps all.

Opening checks the file: `PRAGMA integrity_check`, a file that is not a database, or a schema newer
than this version knows are each a `StoreError` with one line naming the file. The schema version is
`PRAGMA user_version`; `MIGRATIONS[n]` takes a file from version n to n + 1.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import trio

from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, StateQuery, TransitionRow
from apikeyrouter.errors import StoreError
from apikeyrouter.store.backend import Batch, RecordId
from apikeyrouter.store.codec import RECORD_TYPES, decode, encode, shift_row

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE records (
        kind TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE transitions (
        seq INTEGER PRIMARY KEY, key TEXT NOT NULL, at REAL NOT NULL, from_state TEXT NOT NULL,
        to_state TEXT NOT NULL, reason TEXT NOT NULL, cause TEXT NOT NULL, until REAL
    );
    CREATE INDEX transitions_key_at ON transitions (key, at);
    CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY, at REAL NOT NULL, request_id TEXT NOT NULL, decision_id TEXT NOT NULL,
        key TEXT NOT NULL, provider TEXT NOT NULL, model TEXT, client TEXT, outcome TEXT NOT NULL,
        attempt INTEGER NOT NULL, latency_s REAL NOT NULL
    );
    CREATE INDEX decisions_at ON decisions (at);
    CREATE INDEX decisions_key_at ON decisions (key, at);
    CREATE TABLE budget_events (
        seq INTEGER PRIMARY KEY, at REAL NOT NULL, budget TEXT NOT NULL, event TEXT NOT NULL,
        hold_id TEXT NOT NULL, amount TEXT NOT NULL
    );
    CREATE INDEX budget_events_budget_at ON budget_events (budget, at);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = {
    "transitions": ("key", "at", "from_state", "to_state", "reason", "cause", "until"),
    "decisions": (
        "at", "request_id", "decision_id", "key", "provider", "model", "client", "outcome", "attempt", "latency_s",
    ),
    "budget_events": ("at", "budget", "event", "hold_id", "amount"),
}
_TABLE = {TransitionRow: "transitions", DecisionRow: "decisions", BudgetRow: "budget_events"}
_TRAIL_TABLE = {"transitions": "transitions", "decisions": "decisions", "budgets": "budget_events"}
_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in _COLUMNS.items()
}


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: Path | str, *, retention: int = 100_000) -> None:
        self.path = Path(path)
        self.retention = retention
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._wall_offset = 0.0
        self.writes = 0  # transactions committed
        self.write_cpu_s = 0.0  # CPU seconds the worker thread spent encoding and writing them

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # -- open -----------------------------------------------------------------------------------------

    async def open(self, wall_offset: float) -> dict[RecordId, Any]:
        self._wall_offset = wall_offset
        return await self._run(self._open_sync)

    def _fail(self, why: str) -> StoreError:
        return StoreError(f"store {self.path}: {why}", path=str(self.path))

    def _open_sync(self) -> dict[RecordId, Any]:
        if self.path.parent and not self.path.parent.is_dir():
            raise self._fail(f"directory {self.path.parent} does not exist")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open ({exc})") from None
        try:
            self._check(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
            records = self._load(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._fail(f"not a usable database ({exc}); move it aside to start afresh") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return records

    def _check(self, conn: sqlite3.Connection) -> None:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if result != ["ok"]:
            raise self._fail(f"integrity check failed ({'; '.join(result[:3])}); move it aside to start afresh")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise self._fail(
                f"schema version {version} was written by a newer apikeyrouter (this one reads up to "
                f"{SCHEMA_VERSION}); upgrade, or move the file aside"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _load(self, conn: sqlite3.Connection) -> dict[RecordId, Any]:
        records: dict[RecordId, Any] = {}
        for kind, rid, value in conn.execute("SELECT kind, id, value FROM records"):
            if kind in RECORD_TYPES:  # kinds a later version added are kept on disk, not read
                records[kind, rid] = decode(kind, json.loads(value), self._wall_offset)
        return records

    # -- write ----------------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        await self._run(lambda: self._write_sync(batch))

    def _write_sync(self, batch: Batch) -> None:
        started = time.thread_time()
        try:
            self._write_batch(batch)
        finally:
            self.write_cpu_s += time.thread_time() - started

    def _write_batch(self, batch: Batch) -> None:
        conn = self._connection()
        offset = self._wall_offset
        written_at = time.time()  # wall clock: for a person reading the file, never read back as state
        upserts = [
            (kind, rid, json.dumps(encode(record, offset), separators=(",", ":")), written_at)
            for (kind, rid), record in batch.records.items()
        ]
        inserts: dict[str, list[tuple[Any, ...]]] = {}
        for row in batch.rows:
            inserts.setdefault(_TABLE[type(row)], []).append(_values(row, offset))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO records (kind, id, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                upserts,
            )
            for table, values in inserts.items():
                conn.executemany(_INSERT[table], values)
                if table != "transitions":
                    trim = f"DELETE FROM {table} WHERE seq <= (SELECT MAX(seq) FROM {table}) - ?"
                    conn.execute(trim, (self.retention,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.writes += 1

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._fail("not open")
        return self._conn

    # -- query ----------------------------------------------------------------------------------------

    async def query(self, query: StateQuery) -> list[HistoryRow]:
        return await self._run(lambda: self._query_sync(query))

    def _query_sync(self, query: StateQuery) -> list[HistoryRow]:
        table = _TRAIL_TABLE[query.trail]
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("key", query.key if query.trail != "budgets" else None),
            ("model", query.model if query.trail == "decisions" else None),
            ("client", query.client if query.trail == "decisions" else None),
            ("outcome", query.outcome if query.trail == "decisions" else None),
            ("budget", query.budget if query.trail == "budgets" else None),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("at >= ?")
            args.append(query.since + self._wall_offset)
        if query.until is not None:
            where.append("at <= ?")
            args.append(query.until + self._wall_offset)
        cols = _COLUMNS[table]
        sql = f"SELECT {', '.join(cols)} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at DESC, seq DESC LIMIT ?"
        args.append(query.limit)
        rows = self._connection().execute(sql, args).fetchall()
        return [shift_row(_row(table, dict(zip(cols, r, strict=True))), -self._wall_offset) for r in rows]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)


def _values(row: HistoryRow, offset: float) -> tuple[Any, ...]:
    """A row's column values, its times moved by `offset` (as codec.shift_row would, without a new row)."""
    at = row.at + offset
    match row:
        case TransitionRow():
            until = None if row.until is None else row.until + offset
            return (row.key, at, row.from_state, row.to_state, row.reason, row.cause, until)
        case DecisionRow():
            return (
                at, row.request_id, row.decision_id, row.key, row.provider, row.model, row.client,
                row.outcome, row.attempt, row.latency_s,
            )
        case BudgetRow():
            return (at, row.budget, row.event, row.hold_id, str(row.amount))
    raise TypeError(f"not a history row: {type(row).__name__}")


def _row(table: str, values: dict[str, Any]) -> HistoryRow:
    if table == "transitions":
        return TransitionRow(**values)
    if table == "decisions":
        return DecisionRow(**values)
    return BudgetRow(**{**values, "amount": Decimal(values["amount"])})
