"""The store writer's protocol (store/writer.py): what actors tell it changed, and what they ask of it.

`Save` carries the latest value of one record (a key's `KeyRecord`, the budget ledger) with the history
rows that change produced; the writer keeps only the newest value of each record until its next flush.
`Append` carries rows alone (routing decisions). Values are frozen, in trio time.
"""

from __future__ import annotations

from typing import Any

import attrs

from apikeyrouter.domain.history import HistoryRow, StateQuery
from apikeyrouter.kernel.actor import Reply

__all__ = ["Append", "Flush", "Load", "Query", "Save", "StoreCommand"]


@attrs.frozen
class Save:
    kind: str
    id: str
    record: Any
    rows: tuple[HistoryRow, ...] = ()


@attrs.frozen
class Append:
    rows: tuple[HistoryRow, ...]


@attrs.frozen
class Load:
    """Answered with the record's latest value (written or not), or None."""

    kind: str
    id: str
    reply_to: Reply[Any]


@attrs.frozen
class Flush:
    """Answered once everything told before it is committed to the backend."""

    reply_to: Reply[None]


@attrs.frozen
class Query:
    """Answered with the matching history rows (after a flush, so they include everything told before)."""

    query: StateQuery
    reply_to: Reply[list[HistoryRow]]


StoreCommand = Save | Append | Load | Flush | Query
