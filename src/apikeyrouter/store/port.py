"""How an actor reaches the store writer: `StorePort` (shared: the writer's stable ref and its `Pending`
table) and `Outbox` (one per actor).

Every change goes into `Pending`, a coalescing mailbox the writer empties once per flush: the newest
value of each record replaces the one not yet taken, rows queue in order, and the writer's flush task is
woken when the table stops being empty. A change is a dict assignment and a list extend in the caller's
own task: no message, no mailbox hop, no task switch per settle (a message per change cost the request
path four tells per request, ~5% of its CPU). The writer reads the table in the trio thread when it cuts
a batch, before the worker thread sees the batch, so nothing is shared across threads.

The table outlives writer instances (it hangs off `StoreState`): what a crashed writer had not taken
yet waits for the next instance; nothing is lost in a dead mailbox.

Backpressure, never a silent drop: an actor's handlers are plain `def`s and cannot wait, so a change is
always taken; when more than `limit` rows wait (the backend is slow or down, no batch is cut), `drain()`
returns an awaitable that waits until the writer takes them, and the actor returns it from `receive`,
so its loop waits before it reads its next message. Its own mailbox then fills, and its callers wait in
turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from apikeyrouter.domain.history import HistoryRow
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.messages.store import Load, StoreCommand
from apikeyrouter.store.backend import RecordId

Rows = tuple[HistoryRow, ...] | list[HistoryRow]

__all__ = ["Deferred", "Outbox", "Pending", "StorePort"]

_RETRY_S = 0.01  # while the writer restarts


class Deferred:
    """A record built when the writer takes it, not when it changes: `build()` returns the sender's
    record as of its latest change. A key changes twice per request and the writer takes its record
    once per flush, so the sender puts the same `Deferred` at every change and the record is built once
    per batch (in the trio thread, when the batch is cut, between two of the sender's handlers)."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build


def _resolved(records: dict[RecordId, Any]) -> dict[RecordId, Any]:
    for rid, record in records.items():
        if type(record) is Deferred:
            records[rid] = record.build()
    return records


class Pending:
    """What changed since the writer last cut a batch (module docstring). Only the writer takes from it.
    A record put as a `Deferred` is built when it is taken or read."""

    __slots__ = ("changes", "limit", "ready", "records", "room", "rows")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit  # rows waiting before senders are made to wait
        self.records: dict[RecordId, Any] = {}
        self.rows: list[HistoryRow] = []
        self.changes = 0  # changes put since the last take (each is one change of one record)
        self.ready = trio.Event()  # set when something is put: the writer's flush task waits on it
        self.room = trio.Event()  # set when the writer takes what waits

    def put(self, kind: str, record_id: str, record: Any, rows: Rows) -> None:
        self.records[kind, record_id] = record
        if rows:
            self.rows.extend(rows)
        self.changes += 1
        if not self.ready.is_set():
            self.ready.set()

    def put_rows(self, rows: Rows) -> None:
        self.rows.extend(rows)
        if not self.ready.is_set():
            self.ready.set()

    def __bool__(self) -> bool:
        return bool(self.records or self.rows)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.limit

    def get(self, rid: RecordId) -> Any:
        """The newest value of a record not taken yet (None: nothing waits for it)."""
        record = self.records.get(rid)
        if type(record) is Deferred:
            record = self.records[rid] = record.build()
        return record

    def take(self) -> tuple[dict[RecordId, Any], list[HistoryRow], int]:
        """Everything waiting (the writer's, when it cuts a batch); wakes senders waiting for room."""
        taken = (_resolved(self.records), self.rows, self.changes)
        self.records, self.rows, self.changes = {}, [], 0
        room, self.room = self.room, trio.Event()
        room.set()
        return taken

    async def wait_for_room(self) -> None:
        while self.full:
            await self.room.wait()


class StorePort:
    """The writer's address, bound once when its first instance is made (refs outlive restarts), and the
    `Pending` table every actor puts its changes in."""

    def __init__(self, pending: Pending | None = None) -> None:
        self.ref: ActorRef[StoreCommand] | None = None
        self.pending = pending if pending is not None else Pending()

    def bind(self, ref: ActorRef[StoreCommand], pending: Pending | None = None) -> None:
        """`pending`: the writer's table, for a port made before the writer's state was (a harness that
        binds its own port to `run_store`'s writer); outboxes made earlier follow it."""
        if self.ref is None:
            self.ref = ref
            if pending is not None:
                self.pending = pending

    def require(self) -> ActorRef[StoreCommand]:
        """The writer's ref; `ActorStopped` before its first instance was made."""
        if self.ref is None:
            raise ActorStopped("store", "is not running")
        return self.ref

    async def load(self, kind: str, record_id: str) -> Any:
        ref = self.require()
        while True:
            try:
                return await ref.ask(lambda r: Load(kind, record_id, r))
            except ActorStopped:
                await trio.sleep(_RETRY_S)

    def outbox(self) -> Outbox:
        return Outbox(self)


class Outbox:
    """An actor's way to the store: its changes go into the port's `Pending` table."""

    __slots__ = ("_port",)

    def __init__(self, port: StorePort) -> None:
        self._port = port

    def save(self, kind: str, record_id: str, record: Any, rows: Rows = ()) -> None:
        self._port.pending.put(kind, record_id, record, rows)

    def append(self, rows: Rows) -> None:
        self._port.pending.put_rows(rows)

    @property
    def backlog(self) -> int:
        """Rows waiting for the writer to take them (every sender's: the table is shared)."""
        return len(self._port.pending.rows)

    def drain(self) -> Awaitable[None] | None:
        """None while there is room; else an awaitable that returns once the writer took what waits."""
        pending = self._port.pending
        return pending.wait_for_room() if pending.full else None
