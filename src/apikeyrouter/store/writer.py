"""`StoreWriter`: the `store` child of the tree, the one task that talks to the backend.

Actors put what changed in the port's `Pending` table through their `Outbox` (port.py) and go on:
the newest value of each record replaces the one not yet written (coalescing), rows queue in order,
and the flush task is woken. The flush task waits `flush_interval` seconds so one transaction carries
everything that changed meanwhile, takes the table, then writes the batch (`StateStore.write`, in a
worker thread for SQLite). A failed write is logged and tried again with backoff; nothing is dropped.
The receive loop only answers asks (`Load`, `Flush`, `Query`) and takes `Save`/`Append` messages from
tools that tell rather than put; it never pauses for the interval (a pause lost a budget's last spend
at a stop).

Backpressure, never a silent drop: when more than `max_rows` rows wait (the backend is slow or down,
so no batch is cut), senders wait in their `Outbox.drain()` (their own receive loops pause), and so on
up to callers; a `Save`/`Append` told past the bound stops the receive loop until a flush makes room.
Records need no bound: there is one pending value per record.

Loads are answered from `StoreState.latest`, the newest value of every record, seeded from the
backend before the tree starts (open.py) and kept across restarts of this actor, so a restarted key
actor restores what it last saved even if that was never written. Stopping writes everything
pending (the stop flush is complete) and closes the backend; `store` is the first child started and
the last stopped, so every actor's last change has arrived by then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, assert_never

import attrs
import structlog
import trio

from apikeyrouter.domain.history import HistoryRow
from apikeyrouter.errors import ActorStopped
from apikeyrouter.kernel.actor import Actor, Reply
from apikeyrouter.messages.store import Append, Flush, Load, Query, Save, StoreCommand
from apikeyrouter.store.backend import Batch, RecordId, StateStore
from apikeyrouter.store.port import Pending, StorePort

__all__ = ["StoreState", "StoreWriter", "run_store"]

log = structlog.get_logger("apikeyrouter.store")

_BACKOFF_MAX_S = 5.0
_GREEDY = 4096  # messages taken in one turn at most, so the loop still checkpoints under a flood


@attrs.define
class StoreState:
    """What outlives one writer instance: the newest records, and what is not written yet."""

    backend: StateStore
    latest: dict[RecordId, Any] = attrs.field(factory=dict)
    dirty: dict[RecordId, Any] = attrs.field(factory=dict)
    rows: list[HistoryRow] = attrs.field(factory=list)
    pending: Pending = attrs.field(factory=Pending)  # what actors put since the last cut (port.py)
    writing: Batch | None = None  # taken for the write under way: given back if the writer crashes
    saves: int = 0  # Save messages received (each is one change of one record)
    batches: int = 0  # batches written
    failures: int = 0  # writes that failed (and were tried again)
    last_error: str | None = None  # why the last write failed, until one succeeds (store/health.py)


class StoreWriter(Actor[StoreCommand]):
    kind = "store"

    def __init__(
        self, state: StoreState, *, flush_interval: float = 0.05, max_rows: int = 10_000, mailbox: int = 4096
    ) -> None:
        super().__init__("store", mailbox=mailbox)
        self._state = state
        self._interval = flush_interval
        state.pending.limit = max_rows
        self._waiters: list[Reply[None]] = []
        self._stopping = False
        self._stop = trio.Event()
        self._done = trio.Event()

    def stop(self) -> None:
        """Finish what is queued first: closing the mailbox (new tells fail with `ActorStopped`) ends the
        receive loop once every change told before the stop is taken in; the stop flush writes them all."""
        self.stop_after_queue()

    async def pre_start(self) -> None:
        st = self._state
        if st.writing is not None:  # the last instance crashed during a write: write it again
            st.dirty = {**st.writing.records, **st.dirty}
            st.rows = [*st.writing.rows, *st.rows]
            st.writing = None
        self.nursery.start_soon(self._flush_loop)
        if st.dirty or st.rows or st.pending:
            st.pending.ready.set()  # what a crashed instance left unwritten, or did not take yet

    async def post_stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self._state.pending.ready.set()
        await self._done.wait()
        await self._state.backend.close()

    def state_summary(self) -> dict[str, Any]:
        st = self._state
        return {
            "backend": st.backend.kind,
            "records": len(st.latest),
            "pending_records": len(st.dirty) + len(st.pending.records),
            "pending_rows": len(st.rows) + len(st.pending.rows),
            "saves": st.saves,
            "batches": st.batches,
            "failures": st.failures,
        }

    def receive(self, msg: StoreCommand) -> Awaitable[None] | None:
        self._take(msg)
        # Everything else already queued is taken in the same turn: one message per turn of the scheduler
        # cannot keep up with a thousand request tasks each telling a few.
        recv = None if self.handling_direct else self._recv  # delivered directly: nothing is queued
        for _ in range(_GREEDY):
            try:
                more = recv.receive_nowait() if recv is not None else None
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if more is None:
                break
            self._take(more)
            self.handled += 1
        return self._changed()

    def _take(self, msg: StoreCommand) -> None:
        st = self._state
        match msg:
            case Save(kind=kind, id=rid, record=record, rows=rows):
                st.pending.put(kind, rid, record, rows)
            case Append(rows=rows):
                st.pending.put_rows(rows)
            case Load(kind=kind, id=rid, reply_to=loaded):
                loaded.send(self._latest((kind, rid)))
            case Flush(reply_to=reply):
                self._handle_flush(reply)
            case Query(query=query, reply_to=rows_reply):
                flushed: Reply[None] = Reply()
                self._handle_flush(flushed)
                self.nursery.start_soon(self._query, query, flushed, rows_reply)
            case _:
                assert_never(msg)

    def _latest(self, rid: RecordId) -> Any:
        """A record's newest value: not taken yet, taken but not written, or written."""
        st = self._state
        if rid in st.pending.records:
            return st.pending.get(rid)
        for newest in (st.dirty, st.latest):
            if rid in newest:
                return newest[rid]
        return None

    def _handle_flush(self, reply: Reply[None]) -> None:
        st = self._state
        if st.dirty or st.rows or st.pending or self._waiters or st.writing is not None:  # in flight: not done
            self._waiters.append(reply)
            st.pending.ready.set()
        else:
            reply.send(None)

    def _changed(self) -> Awaitable[None] | None:
        pending = self._state.pending
        return pending.wait_for_room() if pending.full else None

    async def _query(self, query: Any, flushed: Reply[None], reply: Reply[list[HistoryRow]]) -> None:
        try:
            await flushed.wait()
            reply.send(await self._state.backend.query(query))
        except Exception as exc:
            reply.fail(exc)

    async def _flush_loop(self) -> None:
        try:
            await self._flushing()
        finally:
            # Crashed or cancelled: whoever waits for a flush hears so (a stop answers them all first).
            for reply in self._waiters:
                reply.fail(ActorStopped(self.name, "stopped before the flush"))
            self._waiters = []

    async def _flushing(self) -> None:
        st = self._state
        while True:
            await st.pending.ready.wait()
            st.pending.ready = trio.Event()
            if not self._stopping and self._interval > 0:
                with trio.move_on_after(self._interval):
                    await self._stop.wait()  # a stop cuts the wait short
            records, rows, changes = st.pending.take()
            st.saves += changes
            st.latest.update(records)
            batch = Batch(records={**st.dirty, **records}, rows=(*st.rows, *rows))
            waiters, self._waiters = self._waiters, []
            st.dirty, st.rows = {}, []
            if len(batch):
                st.writing = batch
                await self._write(batch)
                st.writing = None
            for reply in waiters:
                reply.send(None)
            if self._stopping and not (st.dirty or st.rows or st.pending or self._waiters):
                self._done.set()
                return

    async def _write(self, batch: Batch) -> None:
        st = self._state
        delay = 0.05
        while True:
            try:
                await st.backend.write(batch)
            except Exception as exc:
                st.failures += 1
                st.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                log.error("store_write_failed", error=f"{type(exc).__name__}: {exc}", retry_in=delay, size=len(batch))
                await trio.sleep(delay)
                delay = min(_BACKOFF_MAX_S, delay * 2)
            else:
                st.batches += 1
                st.last_error = None
                return


@asynccontextmanager
async def run_store(
    backend: StateStore,
    *,
    wall_offset: float = 0.0,
    flush_interval: float = 0.05,
    mailbox: int = 4096,
    max_rows: int = 10_000,
) -> AsyncIterator[StorePort]:
    """A writer over `backend` outside a supervision tree (actors run on their own, tools, tests):
    opens the backend, yields the port to give actors, and on exit writes everything and closes it."""
    state = StoreState(backend, latest=await backend.open(wall_offset), pending=Pending())
    writer = StoreWriter(state, flush_interval=flush_interval, mailbox=mailbox, max_rows=max_rows)
    port = StorePort(state.pending)
    async with trio.open_nursery() as nursery:
        port.bind(await nursery.start(writer.run))
        try:
            yield port
        finally:
            writer.stop()
