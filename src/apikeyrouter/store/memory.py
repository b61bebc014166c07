"""State stores. `MemoryStore` keeps each key's durable record in a dict, so a restarted KeyActor
restores its quota, breaker and lifecycle instead of coming back "fresh"."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["MemoryStore", "StateStore"]


class StateStore(Protocol):
    def load(self, key: str) -> Any | None: ...

    def save(self, key: str, record: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class MemoryStore:
    """The library default: records live as long as the process. Records are frozen values."""

    def __init__(self) -> None:
        self._records: dict[str, Any] = {}
        self.writes = 0

    def load(self, key: str) -> Any | None:
        return self._records.get(key)

    def save(self, key: str, record: Any) -> None:
        self._records[key] = record
        self.writes += 1

    def delete(self, key: str) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
