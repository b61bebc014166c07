"""`SnapshotBoard`: where actors publish their frozen snapshots for others to read.

Key and provider actors replace their entry after every change; the router reads entries (never an
actor's private state) and keeps its index fresh by draining the set of ids changed since it last
looked, so a decision costs O(changed) maintenance, not O(keys).

A key publishes twice per request (reserve, settle) and most of those snapshots are never read: the
router reads a key once per decision, whatever happened to it since. So a key actor may publish lazily
(`publish_key_lazy`): it marks its entry changed and hands the board a function that builds the frozen
`KeySnapshot` of its state as of that change; the board calls it the first time the entry is read
after the change and keeps the value until the next one. The function is the actor's own (it reads
only the state it owns, and builds a frozen value from it); the board runs it between two of the
actor's handlers (trio runs one task at a time and a key's handlers are plain `def`s that cannot
await), and the actor publishes again at every change, so what the build sees is the state of the last
publish: readers get the same value an eager publish would have given them, and never a live object.

The router does not need the whole snapshot: it ranks and filters on a `KeyView`. A lazy publisher
also hands over a view build, `(prices, degraded) -> KeyView`, that makes the view of the same state
straight from the actor's working values (no frozen quota, no snapshot); `KeySnapshots.view` uses it,
or `snapshot_view` of the snapshot for an entry published whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import trio

from apikeyrouter.domain.view import quality_of, snapshot_view

if TYPE_CHECKING:
    from apikeyrouter.domain.cost import ModelPrice
    from apikeyrouter.domain.health import ProviderSnapshot
    from apikeyrouter.domain.keystate import KeySnapshot
    from apikeyrouter.domain.scoring import KeyView

__all__ = ["KeySnapshots", "SnapshotBoard", "SnapshotBuild", "ViewBuild"]

SnapshotBuild = Callable[[], "KeySnapshot"]
ViewBuild = Callable[["Mapping[str, ModelPrice]", bool], "KeyView"]  # (prices, provider degraded) -> view


class KeySnapshots(Mapping[str, "KeySnapshot"]):
    """The board's key entries, by key id: each built when first read after its key's last change."""

    __slots__ = ("_builds", "_provider", "_snaps", "_views")

    def __init__(self) -> None:
        self._snaps: dict[str, KeySnapshot | None] = {}  # None: changed since last built
        self._builds: dict[str, SnapshotBuild] = {}
        self._views: dict[str, ViewBuild] = {}
        self._provider: dict[str, str] = {}  # key id -> provider id, readable without a build

    def __getitem__(self, key_id: str) -> KeySnapshot:
        snap = self._snaps[key_id]
        if snap is None:
            snap = self._snaps[key_id] = self._builds[key_id]()
        return snap

    def get(self, key_id: str, default: KeySnapshot | None = None) -> KeySnapshot | None:  # type: ignore[override]
        snap = self._snaps.get(key_id, default)
        if snap is None and key_id in self._snaps:
            snap = self._snaps[key_id] = self._builds[key_id]()
        return snap

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._snaps

    def __iter__(self) -> Iterator[str]:
        return iter(self._snaps)

    def __len__(self) -> int:
        return len(self._snaps)

    def view(self, key_id: str, prices: Mapping[str, ModelPrice], degraded: bool) -> KeyView | None:
        """The scoring view of the key's latest state (None: not on the board). Not cached: the router
        keeps the views it builds."""
        build = self._views.get(key_id)
        if build is not None:  # published lazily: the publisher's state is still that of its last publish
            return build(prices, degraded)
        snap = self.get(key_id)
        if snap is None:
            return None
        return snapshot_view(snap, prices, quality=quality_of(snap.metadata), degraded=degraded)

    def provider_of(self, key_id: str) -> str | None:
        return self._provider.get(key_id)

    def with_provider(self, provider: str) -> list[str]:
        return [k for k, p in self._provider.items() if p == provider]

    def _put(self, snapshot: KeySnapshot) -> None:
        self._snaps[snapshot.id] = snapshot
        self._builds.pop(snapshot.id, None)
        self._views.pop(snapshot.id, None)
        self._provider[snapshot.id] = snapshot.provider

    def _put_lazy(self, key_id: str, provider: str, build: SnapshotBuild, view: ViewBuild) -> None:
        self._snaps[key_id] = None
        if self._builds.get(key_id) is not build:
            self._builds[key_id] = build
            self._views[key_id] = view
            self._provider[key_id] = provider

    def _pop(self, key_id: str) -> None:
        self._snaps.pop(key_id, None)
        self._builds.pop(key_id, None)
        self._views.pop(key_id, None)
        self._provider.pop(key_id, None)


class SnapshotBoard:
    def __init__(self) -> None:
        self.keys = KeySnapshots()
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
        self.keys._put(snapshot)
        self._dirty.add(snapshot.id)
        self._removed.discard(snapshot.id)
        self._notify()

    def publish_key_lazy(self, key_id: str, provider: str, build: SnapshotBuild, view: ViewBuild) -> None:
        """A key changed: its snapshot is `build()`, called when the entry is first read, and its scoring
        view `view(prices, degraded)` (module docstring). Both must describe the publisher's state as of
        this call, for as long as the publisher does not publish again; the view equals `snapshot_view`
        of the snapshot."""
        self.keys._put_lazy(key_id, provider, build, view)
        self._dirty.add(key_id)
        if self._removed:
            self._removed.discard(key_id)
        self._notify()

    def remove_key(self, key_id: str) -> None:
        self.keys._pop(key_id)
        self._dirty.discard(key_id)
        self._removed.add(key_id)

    def publish_provider(self, snapshot: ProviderSnapshot) -> None:
        previous = self.providers.get(snapshot.id)
        self.providers[snapshot.id] = snapshot
        if previous is None or previous.degraded != snapshot.degraded:
            # Provider health feeds every one of its keys' scores: mark them for re-indexing.
            self._dirty.update(self.keys.with_provider(snapshot.id))

    def drain(self) -> tuple[set[str], set[str]]:
        """Ids changed and ids removed since the last drain."""
        dirty, removed = self._dirty, self._removed
        self._dirty, self._removed = set(), set()
        return dirty, removed
