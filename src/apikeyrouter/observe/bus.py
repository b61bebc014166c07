"""`EventBus`: in-process delivery of typed events (`observe.events.Event`) to whoever listens.

Two ways to listen, neither of which can slow a publisher:

- `subscribe(kinds)`: a bounded queue per subscriber, read as an async iterator. Publishing never
  waits: a subscriber that cannot keep up is told (`lagged` is set, then its stream ends with
  `SubscriberLagged`) and dropped. For consumers that may be slow (a debug client on a socket).
- `observe(EventType, callback)`: the callback is called inline, inside `publish`, for every event of
  that type. For consumers that must see every event and cost next to nothing (metrics counters).

The bus also holds `wall_offset` (wall seconds minus trio seconds), the one offset every consumer
passes to `event_json` / `render_wall`, so a time renders the same wherever it is shown.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import structlog
import trio

from apikeyrouter.errors import ApiKeyRouterError
from apikeyrouter.observe.events import Event, unknown_kinds

__all__ = ["EventBus", "Subscriber", "SubscriberLagged"]

log = structlog.get_logger("apikeyrouter.events")

E = TypeVar("E", bound=Event)


class SubscriberLagged(ApiKeyRouterError):
    def __init__(self, capacity: int) -> None:
        super().__init__(f"subscriber could not keep up (queue of {capacity} events full); dropped")
        self.capacity = capacity


def _matches(kind: str, wanted: frozenset[str] | None) -> bool:
    return wanted is None or kind in wanted or kind.split(".", 1)[0] in wanted


def _wanted(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """A filter of kinds or prefixes; an unknown name is a mistake, not an empty stream."""
    if not kinds:
        return None
    wanted = frozenset(kinds)
    unknown = unknown_kinds(sorted(wanted))
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}: see apikeyrouter.observe.KINDS")
    return wanted


class Subscriber:
    __slots__ = ("_bus", "_recv", "_send", "capacity", "kinds", "lagged")

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None, capacity: int) -> None:
        self._bus = bus
        self.kinds = kinds
        self.capacity = capacity
        self.lagged = False
        self._send, self._recv = trio.open_memory_channel[Event](capacity)

    def wants(self, kind: str) -> bool:
        return _matches(kind, self.kinds)

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

    def pending(self) -> list[Event]:
        """Take the events already queued, without waiting (an empty list if none)."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return out

    async def receive(self) -> Event:
        """The next event, waiting for it. Unlike iterating, a cancelled wait (a consumer that also
        wakes on a timer) leaves the subscription open. Raises `SubscriberLagged` once dropped for
        lagging, `trio.EndOfChannel` once closed."""
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self.lagged:
                raise SubscriberLagged(self.capacity) from None
            raise trio.EndOfChannel from None

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
    def __init__(self, *, recent: int = 256, wall_offset: float | None = None) -> None:
        """`wall_offset`: default, measured the first time it is read (inside trio)."""
        self._subscribers: set[Subscriber] = set()
        self._observers: dict[type[Any], list[Callable[[Any], None]]] = {}
        self._recent: deque[Event] = deque(maxlen=max(recent, 0))
        self._wall_offset = wall_offset
        self.published = 0
        self.dropped_subscribers = 0
        self.observer_errors = 0

    @property
    def wall_offset(self) -> float:
        if self._wall_offset is None:
            # Wall clock only to render times for humans; every rule runs on trio's clock.
            self._wall_offset = time.time() - trio.current_time()
        return self._wall_offset

    def publish(self, event: Event) -> None:
        self.published += 1
        self._recent.append(event)
        for callback in self._observers.get(type(event), ()):
            try:
                callback(event)
            except Exception as exc:  # an observer's bug must not fail the publisher (a key actor, a request)
                self.observer_errors += 1
                log.error("event_observer_failed", kind=event.kind, error=f"{type(exc).__name__}: {exc}")
        if not self._subscribers:
            return
        kind = event.kind
        for sub in list(self._subscribers):
            if sub.wants(kind) and not sub._offer(event):
                self._subscribers.discard(sub)
                self.dropped_subscribers += 1

    def subscribe(self, kinds: Iterable[str] | None = None, *, capacity: int = 256) -> Subscriber:
        """A bounded stream of the events whose kind (or kind's prefix) is in `kinds` (None: all).

        Raises `ValueError` for a name that is neither a kind nor a prefix of one.
        """
        sub = Subscriber(self, _wanted(kinds), capacity)
        self._subscribers.add(sub)
        return sub

    def observe(self, event_type: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Call `callback(event)` inline, inside `publish`, for every event of exactly `event_type`.
        Returns a function that stops the calls.

        Why inline rather than a subscriber task: an observer is for consumers that must count every
        event (metrics). A bounded subscriber would be dropped the moment it lagged behind a burst,
        losing counts silently, and it costs a channel send plus a task wake-up per event on the hot
        path; an inline call of a counter increment costs about a microsecond, with no queue, no task
        and no copy. The price is the contract: the callback runs on the publisher's stack (a key
        actor's receive, a request's task), so it must be O(1) and must not block (it cannot await).
        An exception in it is logged and counted (`observer_errors`), never raised into the publisher.
        """
        callbacks = self._observers.setdefault(event_type, [])
        callbacks.append(callback)

        def stop() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return stop

    def recent(self, limit: int = 50, kinds: Iterable[str] | None = None) -> list[Event]:
        wanted = _wanted(kinds)
        events = [e for e in self._recent if _matches(e.kind, wanted)]
        return events[-limit:] if limit > 0 else []

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
