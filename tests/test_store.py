"""The store writer and its backends: coalescing, backpressure, the stop flush, and SQLite on a real file
(wall-clock times across processes, the audit trail, corrupt and newer files)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from apikeyrouter.domain import budget, lifecycle, quota
from apikeyrouter.domain.circuit import Breaker, BreakerState
from apikeyrouter.domain.history import BudgetRow, DecisionRow, StateQuery, TransitionRow
from apikeyrouter.domain.keystate import KeyRecord
from apikeyrouter.domain.lifecycle import KeyState, Lifecycle
from apikeyrouter.domain.stats import Stats
from apikeyrouter.errors import StoreError
from apikeyrouter.messages.key import InjectCrash
from apikeyrouter.messages.store import Flush
from apikeyrouter.store import Batch, MemoryStore, SqliteStore
from apikeyrouter.store.writer import run_store
from tests.routing_env import chat
from tests.sim_transport import sim_env

D = Decimal


class RecordingStore(MemoryStore):
    """A memory store that keeps every batch it was given, and can be made to stall (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []
        self.stalled = trio.Event()
        self.stalled.set()

    async def write(self, batch: Batch) -> None:
        await self.stalled.wait()
        self.batches.append(batch)
        await super().write(batch)


def key_record(*, spend: str = "0", until: float | None = None, now: float = 0.0) -> KeyRecord:
    lc = Lifecycle(since=now)
    if until is not None:
        lc, _ = lifecycle.throttle(lc, until=until, reason="rate_limited", now=now)
    return KeyRecord(
        lifecycle=lc,
        quota=quota.new_quota(quota.QuotaConfig(rpm=10), now),
        breaker=Breaker(),
        stats=Stats(),
        spend=D(spend),
        fingerprint="fp-test",
    )


def row(n: int) -> TransitionRow:
    return TransitionRow("k", "active", "throttled", f"429 number {n}", "failure", float(n), float(n) + 30)


async def test_repeated_saves_of_one_record_are_one_write_of_the_newest(autojump_clock: object) -> None:
    backend = RecordingStore()
    async with run_store(backend, flush_interval=1.0) as port:
        outbox = port.outbox()
        for n in range(100):
            outbox.save("key", "k", key_record(spend=str(n)), (row(n),))
        assert outbox.drain() is None  # under the bound: the sender goes on at once
        assert port.ref is not None
        await port.ref.ask(Flush)
        assert len(backend.batches) == 1
        (batch,) = backend.batches
        assert list(batch.records) == [("key", "k")] and batch.records["key", "k"].spend == 99
        assert [r.reason for r in batch.rows] == [f"429 number {n}" for n in range(100)]  # rows: every one, in order
        assert trio.current_time() == 1.0  # one flush interval gathered them


async def test_a_stalled_disk_is_backpressure_on_the_sender_never_a_dropped_row(autojump_clock: object) -> None:
    backend = RecordingStore()
    backend.stalled = trio.Event()  # the disk hangs from the first write
    async with run_store(backend, flush_interval=0.0, mailbox=4, max_rows=8) as port:
        outbox = port.outbox()
        for n in range(40):
            outbox.save("key", "k", key_record(spend=str(n)), (row(n),))
        first = outbox.drain()
        assert first is not None  # past the bound: the sender is told to wait
        with trio.fail_after(1):
            await first  # the writer took them for its first write (which hangs)
        for n in range(40, 80):
            outbox.save("key", "k", key_record(spend=str(n)), (row(n),))
        pending = outbox.drain()
        assert pending is not None
        delivered = trio.Event()

        async def deliver() -> None:
            await pending
            delivered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            await trio.sleep(60)
            assert not delivered.is_set() and outbox.backlog == 40  # still waiting: nothing was thrown away
            backend.stalled.set()  # the disk comes back
            with trio.fail_after(1):
                await delivered.wait()
        assert port.ref is not None
        await port.ref.ask(Flush)
        written = [r.reason for b in backend.batches for r in b.rows]
        assert written == [f"429 number {n}" for n in range(80)]
        assert backend.record("key", "k").spend == 79


async def test_leaving_the_store_writes_everything_still_pending(autojump_clock: object) -> None:
    backend = RecordingStore()
    async with run_store(backend, flush_interval=30.0) as port:
        outbox = port.outbox()
        outbox.save("key", "k", key_record(spend="1.25"), (row(1),))
        outbox.append((DecisionRow("r1", "d1", "k", "p", "m", "c", "ok", 1, 0.1, 1.0),))
    assert trio.current_time() < 30.0  # the stop did not wait out the interval
    assert backend.record("key", "k").spend == D("1.25")
    assert len(await backend.query(StateQuery("transitions"))) == 1
    assert len(await backend.query(StateQuery("decisions"))) == 1


async def test_a_throttle_written_in_one_process_ends_at_the_same_wall_time_in_the_next(tmp_path: Path) -> None:
    # Process A: trio time 100 is wall time 1_000_100 (offset 1_000_000); the key is throttled until 160.
    # Process B: trio time 5 is wall time 1_000_120 (offset 1_000_115): the throttle ends at trio 45 there.
    path = tmp_path / "state.db"
    a = SqliteStore(path)
    assert await a.open(1_000_000.0) == {}
    record = key_record(until=160.0, now=100.0)
    ledger = budget.new_ledger([budget.BudgetSpec("global", D("10"), 86_400.0)], 0.0)
    ledger, _ = budget.reserve(ledger, "h1", ["global"], D("0.5"), 100.0, until=130.0)
    ledger, _ = budget.settle(ledger, "h1", D("0.3333"), 101.0)
    ledger, _ = budget.reserve(ledger, "h2", ["global"], D("0.25"), 102.0, until=140.0)
    tr = record.lifecycle.history[-1]
    rows = (
        TransitionRow("k", tr.from_state.value, tr.to_state.value, tr.reason, tr.cause.value, tr.at, tr.until),
        BudgetRow("global", "charged", "h1", D("0.3333"), 101.0),
    )
    await a.write(Batch({("key", "k"): record, ("budgets", "ledger"): ledger}, rows))
    await a.close()

    b = SqliteStore(path)
    restored = await b.open(1_000_115.0)
    key = restored["key", "k"]
    assert isinstance(key, KeyRecord)
    assert key.lifecycle.state is KeyState.THROTTLED and key.lifecycle.until == pytest.approx(45.0)
    assert key.lifecycle.available_at(44.9) == pytest.approx(45.0)
    assert lifecycle.effective(key.lifecycle, 45.0)[0].state is KeyState.ACTIVE
    assert key.fingerprint == "fp-test"
    got = restored["budgets", "ledger"]
    assert budget.status(got, "global", 10.0).spent == D("0.3333")  # exact: money is stored as text
    assert got.holds["h2"].until == pytest.approx(25.0)  # the lease ends at the same wall time
    expired, events = budget.expire(got, 25.0)
    assert [e.hold_id for e in events] == ["h2"] and budget.status(expired, "global", 25.0).reserved == 0
    (trail,) = await b.query(StateQuery("transitions", key="k", since=-20.0))
    assert (trail.to_state, trail.at, trail.until) == ("throttled", pytest.approx(-15.0), pytest.approx(45.0))
    assert await b.query(StateQuery("transitions", key="k", since=-10.0)) == []
    (charged,) = await b.query(StateQuery("budgets", budget="global"))
    assert charged.amount == D("0.3333") and charged.event == "charged"
    await b.close()


async def test_an_open_breaker_and_learned_limits_come_back_on_the_new_clock(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    a = SqliteStore(path)
    await a.open(500.0)
    rec = key_record(now=10.0)
    rec = attrs.evolve(rec, breaker=Breaker(BreakerState.OPEN, consecutive_failures=5, open_until=70.0, openings=1))
    rec = attrs.evolve(rec, quota=quota.reserve(rec.quota, 100, 10.0)[0])
    await a.write(Batch({("key", "k"): rec}))
    await a.close()
    b = SqliteStore(path)
    got = (await b.open(540.0))["key", "k"]
    assert got.breaker.state is BreakerState.OPEN and got.breaker.open_until == pytest.approx(30.0)
    # The request counted at wall 510 still counts in the minute window at wall 560 (trio 20 here).
    assert quota.usage(got.quota, 20.0)["rpm"][0] == 1
    await b.close()


async def test_decision_rows_keep_the_newest_retention_and_filter_by_each_field(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", retention=5)
    await store.open(0.0)
    rows = tuple(
        DecisionRow(f"r{n}", f"d{n}", "k1" if n % 2 else "k2", "p", "gpt-4o-mini", "acme", "ok" if n % 3 else
                    "rate_limited", 1, 0.01, float(n))
        for n in range(12)
    )
    await store.write(Batch(rows=rows))
    kept = await store.query(StateQuery("decisions", limit=100))
    assert [r.request_id for r in kept] == ["r11", "r10", "r9", "r8", "r7"]
    assert [r.request_id for r in await store.query(StateQuery("decisions", key="k1"))] == ["r11", "r9", "r7"]
    assert [r.request_id for r in await store.query(StateQuery("decisions", outcome="rate_limited"))] == ["r9"]
    assert [r.request_id for r in await store.query(StateQuery("decisions", until=8.5))] == ["r8", "r7"]
    assert await store.query(StateQuery("decisions", client="other")) == []
    await store.close()


async def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite, it is a text file that someone put here\n" * 200)
    with pytest.raises(StoreError) as info:
        await SqliteStore(path).open(0.0)
    message = str(info.value)
    assert message.startswith(f"store {path}: not a usable database") and "\n" not in message


async def test_a_damaged_database_fails_its_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    await store.open(0.0)
    await store.write(Batch(rows=tuple(row(n) for n in range(2000))))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), page):  # scribble over every page's cell pointers
        data[start + 8 : start + 64] = b"\x7f" * 56
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        await SqliteStore(path).open(0.0)
    message = str(info.value)
    assert message.startswith(f"store {path}: ") and "\n" not in message
    assert "integrity check failed" in message or "not a usable database" in message


async def test_a_file_from_a_newer_version_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    await store.open(0.0)
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError) as info:
        await SqliteStore(path).open(0.0)
    assert str(info.value) == (
        f"store {path}: schema version 99 was written by a newer apikeyrouter (this one reads up to 1); "
        "upgrade, or move the file aside"
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99


async def test_a_thousand_concurrent_requests_are_all_in_the_store(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = {
        "store": {"kind": "sqlite", "path": str(db)},
        "budgets": {"global": {"limit": "1000", "period": "month"}},
    }
    keys = [(f"k{i}", f"sk-sim-k{i}", {}) for i in range(4)]
    costs: list[Decimal] = []
    async with sim_env(keys, sim_defaults={"rpm": 10**7, "tpm": 10**10}, config=config) as env:

        async def one(i: int) -> None:
            response = await env.router.route(chat(f"request {i}"))
            assert response.metadata is not None
            costs.append(response.metadata.cost)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, i)
    assert len(costs) == 1000
    store = SqliteStore(db)
    records = await store.open(0.0)
    key_records = [r for (kind, _), r in records.items() if kind == "key"]
    assert sum(r.stats.requests for r in key_records) == 1000
    assert sum((r.spend for r in key_records), D(0)) == sum(costs, D(0))
    assert budget.status(records["budgets", "ledger"], "global", 0.0).spent == sum(costs, D(0))
    decisions = await store.query(StateQuery("decisions", limit=10_000))
    assert len({d.request_id for d in decisions}) == 1000 and {d.outcome for d in decisions} == {"ok"}
    moved = await store.query(StateQuery("budgets", budget="global", limit=10_000))
    charged = [c for c in moved if c.event == "charged"]
    assert len(charged) == 1000 and sum((c.amount for c in charged), D(0)) == sum(costs, D(0))
    held = {h.hold_id for h in moved if h.event == "held"}
    assert len(moved) == 2000 and held == {c.hold_id for c in charged}  # every hold, and how it ended
    await store.close()


async def test_a_rotated_key_keeps_its_new_material_across_a_crash_and_the_store_only_its_fingerprint(
    tmp_path: Path,
) -> None:
    # The record used to carry the Secret itself (it would have gone to disk); now it names a fingerprint,
    # and the material a rotation brought lives in the key's child spec, which outlives the crash.
    db = tmp_path / "state.db"
    config = {"store": {"kind": "sqlite", "path": str(db)}}
    async with sim_env([("k", "sk-sim-old-material", {})], config=config) as env:
        await env.router.rotate_key("k", "sk-sim-new-material")
        env.router.key_ref("k").tell_nowait(InjectCrash("after a rotation"))
        with trio.fail_after(10):
            while env.router.key("k") is None or env.router.key("k")["restarts"] != 1:  # type: ignore[index]
                await trio.sleep(0.01)
            response = await env.router.route(chat("with the rotated material"))
        assert response.metadata is not None and response.metadata.key_used == "k"
        assert env.sim.stats("sk-sim-new-material").requests == 1  # what the provider saw
        fingerprint = env.router.key("k")["fingerprint"]  # type: ignore[index]
    wal = db.with_name(db.name + "-wal")
    content = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"sk-sim-new-material" not in content and b"sk-sim-old-material" not in content
    store = SqliteStore(db)
    assert (await store.open(0.0))["key", "k"].fingerprint == fingerprint
    await store.close()


async def test_a_flush_asked_while_a_write_is_in_flight_waits_for_that_write(autojump_clock: object) -> None:
    backend = RecordingStore()
    backend.stalled = trio.Event()  # the disk hangs inside the first write
    async with run_store(backend, flush_interval=0.0) as port:
        port.outbox().save("key", "k", key_record(spend="7"), (row(7),))
        await trio.sleep(1)  # the write has begun: nothing is dirty or pending any more, but nothing is written
        assert port.ref is not None
        flushed = trio.Event()

        async def flush() -> None:
            await port.ref.ask(Flush)  # type: ignore[union-attr]
            flushed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            await trio.sleep(1)
            assert not flushed.is_set()  # "flushed" means written, not taken for a write
            backend.stalled.set()
        assert [r.reason for b in backend.batches for r in b.rows] == ["429 number 7"]
