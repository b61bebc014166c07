"""`Reply`: the one-shot reply slot an ask carries (kernel/actor.py says how asks use it)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import trio

__all__ = ["Reply"]

T = TypeVar("T")

_UNSET: Any = object()


class Reply(Generic[T]):
    """A one-shot reply slot. The first `send`/`fail` wins; later ones are ignored.

    Cheaper than a memory channel (at most one `trio.Event`, made only when someone waits before the
    answer came: an ask answered by direct delivery makes none), and safe to answer after the asker
    left: nobody waits any more, and the value is simply dropped.
    """

    __slots__ = ("_done", "_error", "_event", "_owner", "_value")

    def __init__(self) -> None:
        self._done = False
        self._event: trio.Event | None = None
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._owner: set[Reply[Any]] | None = None

    @property
    def done(self) -> bool:
        return self._done

    def send(self, value: T) -> None:
        if self._done:
            return
        self._value = value
        self._settle()

    def fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        self._settle()

    def _settle(self) -> None:
        self._done = True
        if self._owner is not None:
            self._owner.discard(self)
            self._owner = None
        if self._event is not None:
            self._event.set()

    async def wait(self) -> T:
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self.result()

    def result(self) -> T:
        """The answer of a reply that is `done` (raises its error); no checkpoint."""
        if not self._done:
            raise RuntimeError("Reply.result() before the reply was answered")
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def __repr__(self) -> str:
        return f"Reply(done={self.done})"
