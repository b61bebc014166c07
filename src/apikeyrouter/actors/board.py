"""`SnapshotBoard`: where actors publish their frozen snapshots for others to read.

Key and provider actors replace their entry after every change; the router reads entries (never an
actor's private state) and keeps its index fresh by draining the set of ids changed since it last
looked, so a decision costs O(changed) maintenance, not O(keys).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from apikeyrouter.domain.health import ProviderSnapshot
    from apikeyrouter.domain.keystate import KeySnapshot

__all__ = ["SnapshotBoard"]


class SnapshotBoard:
    def __init__(self) -> None:
        self.keys: dict[str, KeySnapshot] = {}
        self.providers: dict[str, ProviderSnapshot] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._changed: trio.Event | None = None

    async def wait_changed(self) -> None:
        """Until the next snapshot is published (callers bound it with a deadline)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def publish_key(self, snapshot: KeySnapshot) -> None:
        self.keys[snapshot.id] = snapshot
        self._dirty.add(snapshot.id)
        self._removed.discard(snapshot.id)
        self._notify()

    def remove_key(self, key_id: str) -> None:
        self.keys.pop(key_id, None)
        self._dirty.discard(key_id)
        self._removed.add(key_id)

    def publish_provider(self, snapshot: ProviderSnapshot) -> None:
        previous = self.providers.get(snapshot.id)
        self.providers[snapshot.id] = snapshot
        if previous is None or previous.degraded != snapshot.degraded:
            # Provider health feeds every one of its keys' scores: mark them for re-indexing.
            self._dirty.update(k for k, s in self.keys.items() if s.provider == snapshot.id)

    def drain(self) -> tuple[set[str], set[str]]:
        """Ids changed and ids removed since the last drain."""
        dirty, removed = self._dirty, self._removed
        self._dirty, self._removed = set(), set()
        return dirty, removed
