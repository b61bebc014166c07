"""`WakeTimer`: one pending wake-up for an actor whose state changes on its own at a known time.

A bench ends, a breaker cooldown runs out, a budget hold's lease expires: the rules compute these lazily
from `now`, but someone must look at that moment so the change is published when it happens rather than
when somebody next asks. The timer tells the actor a message at the earliest such time; the change itself
is applied in the actor's receive loop, like every other change (the timer task only sleeps and tells).

Only the earliest time matters: arming for a later time while an earlier wake-up is pending keeps the
earlier one (the actor re-arms for the rest when it wakes). The timer's task runs in the actor's nursery;
a full mailbox or a stopped actor makes the wake-up a no-op (the next message applies the change anyway).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import trio

from apikeyrouter.errors import ActorStopped, MailboxFull
from apikeyrouter.kernel.actor import ActorRef

__all__ = ["WakeTimer"]


class WakeTimer:
    __slots__ = ("_at", "_message", "_scope")

    def __init__(self, message: Any) -> None:
        self._message = message
        self._at = math.inf
        self._scope: trio.CancelScope | None = None

    def arm(self, at: float | None, *, ref: ActorRef[Any], nursery: trio.Nursery | None) -> None:
        """Tell `ref` the message at `at` (None: nothing to wait for), unless an earlier wake-up is set."""
        if at is None or nursery is None:
            return
        if at >= self._at and self._scope is not None:
            return
        self.cancel()
        self._at = at
        self._scope = scope = trio.CancelScope()
        nursery.start_soon(self._sleep, at, scope, ref)

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self._scope = None
        self._at = math.inf

    async def _sleep(self, at: float, scope: trio.CancelScope, ref: ActorRef[Any]) -> None:
        with scope:
            await trio.sleep_until(at)
            if self._scope is scope:
                self._scope = None
                self._at = math.inf
            with contextlib.suppress(MailboxFull, ActorStopped):
                ref.tell_nowait(self._message)
