"""`MemoryStore`: the library default. Records and history live as long as the process (or the store
object, when a caller passes the same one to several routers), so a restarted actor restores its state
instead of coming back "fresh". History trails are bounded here too: `retention` rows each, the oldest
dropped first (the SQLite store keeps the whole transition trail)."""

from __future__ import annotations

from collections import deque
from typing import Any

from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, StateQuery, TransitionRow
from apikeyrouter.store.backend import Batch, RecordId

__all__ = ["MemoryStore"]


class MemoryStore:
    kind = "memory"

    def __init__(self, *, retention: int = 100_000) -> None:
        self._records: dict[RecordId, Any] = {}
        self._trails: dict[type[Any], deque[HistoryRow]] = {
            t: deque(maxlen=retention) for t in (TransitionRow, DecisionRow, BudgetRow)
        }
        self.writes = 0  # batches written

    async def open(self, wall_offset: float) -> dict[RecordId, Any]:
        return dict(self._records)

    async def write(self, batch: Batch) -> None:
        self._records.update(batch.records)
        for row in batch.rows:
            self._trails[type(row)].append(row)
        self.writes += 1

    async def query(self, query: StateQuery) -> list[HistoryRow]:
        found: list[HistoryRow] = []
        for trail in self._trails.values():
            found.extend(row for row in trail if query.matches(row))
        found.sort(key=lambda row: row.at, reverse=True)
        return found[: query.limit]

    async def close(self) -> None:
        return None

    def record(self, kind: str, record_id: str) -> Any | None:
        """The last written value of a record (for tests and tools; actors ask the writer)."""
        return self._records.get((kind, record_id))

    def __len__(self) -> int:
        return len(self._records)
