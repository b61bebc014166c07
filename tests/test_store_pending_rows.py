"""`/health/ready` and `/metrics` (`pending_rows`) count every history row not written yet: those actors
put in the store's `Pending` table and those of the batch a failing write holds, not only the writer's
own leftovers (which, since changes go through `Pending`, are almost always none)."""

from __future__ import annotations

from decimal import Decimal

import trio

from apikeyrouter.domain.history import BudgetRow
from apikeyrouter.store.backend import Batch
from apikeyrouter.store.health import store_health
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.port import StorePort
from apikeyrouter.store.writer import StoreState, StoreWriter


class FlakyStore(MemoryStore):
    """A store whose writes fail (a full disk) until `failing` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    async def write(self, batch: Batch) -> None:
        if self.failing:
            raise OSError("No space left on device")
        await super().write(batch)


def _row(n: int) -> BudgetRow:
    return BudgetRow("team-budget", "held", f"hold-{n}", Decimal("0.01"), float(n))


async def test_rows_behind_a_failing_write_count_as_pending_until_written(autojump_clock: object) -> None:
    backend = FlakyStore()
    state = StoreState(backend)
    writer = StoreWriter(state, flush_interval=0.05)
    port = StorePort(state.pending)
    async with trio.open_nursery() as nursery:
        port.bind(await nursery.start(writer.run))
        outbox = port.outbox()

        outbox.append([_row(1), _row(2), _row(3)])
        assert store_health(state, None)["pending_rows"] == 3  # put, not taken yet

        await trio.sleep(1.0)  # the writer took them, and its write keeps failing
        health = store_health(state, None)
        assert health["failing"] and health["write_failures"] >= 1
        assert health["pending_rows"] == 3

        outbox.append([_row(4)])  # more waits behind the failing write
        assert store_health(state, None)["pending_rows"] == 4

        backend.failing = False
        await trio.sleep(30.0)  # the backoff tries again and everything is written
        health = store_health(state, None)
        assert not health["failing"] and health["pending_rows"] == 0
        writer.stop()


def test_decision_rows_the_request_path_dropped_count_among_the_dropped_rows() -> None:
    health = store_health(StoreState(MemoryStore()), None, decisions_dropped=7)
    assert health["dropped_rows"] == 7 and health["decision_rows_dropped"] == 7
    assert not health["failing"]  # dropped history is counted, not an outage
