"""How an actor reaches the store writer: `StorePort` (shared, the writer's stable ref) and `Outbox`
(one per actor, keeps its changes in order when the writer's mailbox is full).

An actor's handlers are plain `def`s, so they cannot wait for mailbox space. `Outbox.save` tells the
writer at once when it can; when the mailbox is full (or the writer is restarting) the message is kept,
and so is every later one, in order, until `drain()` — which the actor returns from `receive`, so its
loop awaits the delivery before it reads its next message. That is the backpressure: the actor's own
mailbox then fills, and its callers wait in turn. Nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import trio

from apikeyrouter.domain.history import HistoryRow
from apikeyrouter.errors import ActorStopped, MailboxFull
from apikeyrouter.kernel.actor import ActorRef
from apikeyrouter.messages.store import Append, Load, Save, StoreCommand

__all__ = ["Outbox", "StorePort"]

_RETRY_S = 0.01  # while the writer restarts


class StorePort:
    """The writer's address, bound once when its first instance is made (refs outlive restarts)."""

    def __init__(self) -> None:
        self.ref: ActorRef[StoreCommand] | None = None

    def bind(self, ref: ActorRef[StoreCommand]) -> None:
        if self.ref is None:
            self.ref = ref

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
    __slots__ = ("_backlog", "_port")

    def __init__(self, port: StorePort) -> None:
        self._port = port
        self._backlog: list[StoreCommand] = []

    def save(self, kind: str, record_id: str, record: Any, rows: tuple[HistoryRow, ...] = ()) -> None:
        self._send(Save(kind, record_id, record, rows))

    def append(self, rows: tuple[HistoryRow, ...]) -> None:
        self._send(Append(rows))

    def _send(self, msg: StoreCommand) -> None:
        if not self._backlog:
            try:
                self._port.require().tell_nowait(msg)
                return
            except (MailboxFull, ActorStopped):
                pass
        self._backlog.append(msg)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def drain(self) -> Awaitable[None] | None:
        """None when everything was delivered; else an awaitable that delivers the rest, in order."""
        return self._deliver() if self._backlog else None

    async def _deliver(self) -> None:
        while self._backlog:
            try:
                await self._port.require().tell(self._backlog[0])
            except ActorStopped:
                await trio.sleep(_RETRY_S)
                continue
            del self._backlog[0]
