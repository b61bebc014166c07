"""Bounded, shielded messaging for the request path: the one place that knows how long to wait.

Once a request has asked a key to reserve (or a budget to hold), it must learn the answer even if its
caller is cancelled meanwhile, or a grant would leak; and a settlement must reach its key's mailbox even
from a caller that is leaving. Both wait at most `grace`, shielded from the caller's cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from apikeyrouter.errors import ActorStopped, MailboxFull
from apikeyrouter.kernel.actor import ActorRef, Reply

__all__ = ["GRACE", "ask_bounded", "tell_bounded"]

T = TypeVar("T")
M = TypeVar("M")

GRACE = 5.0  # seconds a request waits, at most, for an actor on its own path


async def ask_bounded(ref: ActorRef[M], make: Callable[[Reply[T]], M], *, grace: float = GRACE) -> T | None:
    """Ask, shielded, waiting at most `grace`: None when no answer came in time. A cancelled caller still
    receives the answer (and so can give back what it grants). `ActorError`s propagate."""
    with trio.move_on_after(grace) as cs:
        cs.shield = True
        return await ref.ask(make)
    return None


async def tell_bounded(ref: ActorRef[M], msg: M, *, grace: float = GRACE) -> bool:
    """Put `msg` in the actor's mailbox: at once when there is room (no checkpoint), else wait for room,
    shielded, at most `grace`. Returns when the message is in the mailbox; False if the actor is gone
    (it took what the message was about with it) or its mailbox stayed full."""
    try:
        ref.tell_nowait(msg)
        return True
    except MailboxFull:
        pass
    except ActorStopped:
        return False
    with trio.move_on_after(grace) as cs:
        cs.shield = True
        try:
            await ref.tell(msg)
        except ActorStopped:
            return False
        return True
    return False
