"""In-process event stream: every state transition, decision, attempt and outcome, for subscribers.

Publishing never waits: each subscriber has a bounded queue, and a subscriber that cannot keep up is
told (`lagged` is set, then its stream ends with `SubscriberLagged`) and dropped. A slow subscriber can
therefore never slow the router or a key actor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import attrs
import trio

from apikeyrouter.errors import ApiKeyRouterError

__all__ = ["Event", "EventBus", "Subscriber", "SubscriberLagged"]


@attrs.frozen
class Event:
    """One observable happening. `data` holds JSON-ready values only (never key material)."""

    kind: str  # e.g. "key.transition", "router.decision", "request.attempt", "supervisor.restart"
    at: float  # trio.current_time()
    data: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at, **self.data}


class SubscriberLagged(ApiKeyRouterError):
    def __init__(self, capacity: int) -> None:
        super().__init__(f"subscriber could not keep up (queue of {capacity} events full); dropped")
        self.capacity = capacity


class Subscriber:
    __slots__ = ("_bus", "_recv", "_send", "capacity", "kinds", "lagged")

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None, capacity: int) -> None:
        self._bus = bus
        self.kinds = kinds
        self.capacity = capacity
        self.lagged = False
        self._send, self._recv = trio.open_memory_channel[Event](capacity)

    def wants(self, kind: str) -> bool:
        if self.kinds is None:
            return True
        return kind in self.kinds or kind.split(".", 1)[0] in self.kinds

    def _offer(self, event: Event) -> bool:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            async for event in self._recv:
                yield event
            if self.lagged:
                raise SubscriberLagged(self.capacity)
        finally:
            self.close()

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self._send.close()
        self._recv.close()


class EventBus:
    def __init__(self, *, recent: int = 256) -> None:
        self._subscribers: set[Subscriber] = set()
        self._recent: list[Event] = []
        self._recent_cap = recent
        self.published = 0
        self.dropped_subscribers = 0

    def publish(self, kind: str, data: Mapping[str, Any] | None = None, *, at: float | None = None) -> Event:
        event = Event(kind=kind, at=trio.current_time() if at is None else at, data=dict(data or {}))
        self.published += 1
        self._recent.append(event)
        if len(self._recent) > self._recent_cap:
            del self._recent[: len(self._recent) - self._recent_cap]
        for sub in list(self._subscribers):
            if sub.wants(kind) and not sub._offer(event):
                self._subscribers.discard(sub)
                self.dropped_subscribers += 1
        return event

    def subscribe(self, kinds: Iterable[str] | None = None, *, capacity: int = 256) -> Subscriber:
        sub = Subscriber(self, frozenset(kinds) if kinds else None, capacity)
        self._subscribers.add(sub)
        return sub

    def recent(self, limit: int = 50, kinds: Iterable[str] | None = None) -> list[Event]:
        wanted = frozenset(kinds) if kinds else None
        events = [e for e in self._recent if wanted is None or e.kind in wanted or e.kind.split(".")[0] in wanted]
        return events[-limit:] if limit > 0 else []

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
