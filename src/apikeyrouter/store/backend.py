"""The `StateStore` interface: what a backend does for the store writer actor (store/writer.py).

A backend is asked by one task at a time (the writer's) and never by an actor's receive loop:

    records = await store.open(wall_offset)   # once, before the tree starts: every record, in trio time
    await store.write(batch)                  # the latest value of each changed record, plus new rows
    rows = await store.query(StateQuery(...)) # history rows, newest first, in trio time
    await store.close()

`wall_offset` is this process's wall seconds minus trio seconds: a backend that outlives the process
stores wall-clock times (codec.py) and converts with it both ways. A `write` is all or nothing: a
backend that fails raises and the writer keeps the batch to write again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from apikeyrouter.domain.history import HistoryRow, StateQuery

__all__ = ["Batch", "RecordId", "StateStore"]

RecordId = tuple[str, str]  # (kind, id): ("key", "k1"), ("budgets", "ledger")


@attrs.frozen
class Batch:
    records: Mapping[RecordId, Any] = attrs.field(factory=dict)
    rows: tuple[HistoryRow, ...] = ()

    def __len__(self) -> int:
        return len(self.records) + len(self.rows)


class StateStore(Protocol):
    kind: str

    async def open(self, wall_offset: float) -> dict[RecordId, Any]: ...

    async def write(self, batch: Batch) -> None: ...

    async def query(self, query: StateQuery) -> list[HistoryRow]: ...

    async def close(self) -> None: ...
