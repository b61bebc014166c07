"""Bounded, shielded messaging for the request path: the one place that knows how long to wait.

Once a request has asked a key to reserve (or a budget to hold), it must learn the answer even if its
caller is cancelled meanwhile, or a grant would leak; and a settlement must reach its key's mailbox even
from a caller that is leaving. Both wait at most `grace`, shielded from the caller's cancellation. An
answer that comes after the asker stopped waiting is handed to the ask's `undo` (a grant is given back
at once rather than when its lease ends).

An actor restarts in a moment (its supervisor starts the next instance at once), and between two
instances an ask fails with `ActorStopped` (or `ActorCrashed`, for an ask queued behind the message that
crashed it). `ask_restarting` asks again after short waits (`RESTART_WAITS`), a few times: only for
asks that are safe to repeat (a decision; a hold, idempotent by its id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
import trio

from apikeyrouter.errors import ActorError, ActorStopped, MailboxFull
from apikeyrouter.kernel.actor import ActorRef, Reply

__all__ = ["GRACE", "RESTART_WAITS", "ask_bounded", "ask_restarting", "tell_bounded"]

log = structlog.get_logger("apikeyrouter.request")

T = TypeVar("T")
M = TypeVar("M")

GRACE = 5.0  # seconds a request waits, at most, for an actor on its own path
RESTART_WAITS = (0.05, 0.1, 0.2)  # between asks of a restarting actor: four asks within 0.35 s


class _Undoable(Reply[T]):
    """A reply that, once its asker has stopped waiting, hands the answer to `undo` (in the answering
    actor's task, so `undo` must not block: a `tell_nowait`)."""

    __slots__ = ("_abandoned", "_answered", "_undo")

    def __init__(self, undo: Callable[[T], None]) -> None:
        super().__init__()
        self._undo = undo
        self._abandoned = False
        self._answered: list[T] = []

    def send(self, value: T) -> None:
        if self.done:
            return
        self._answered.append(value)
        super().send(value)
        if self._abandoned:
            self._run_undo(value)

    def abandon(self) -> None:
        """The asker stopped waiting: undo the answer if it came already, or when it comes."""
        self._abandoned = True
        if self._answered:
            self._run_undo(self._answered[0])

    def _run_undo(self, value: T) -> None:
        try:
            self._undo(value)
        except Exception:  # never the answering actor's crash: the answer's own lease still ends it
            log.exception("late_answer_undo_failed")


async def ask_bounded(
    ref: ActorRef[M],
    make: Callable[[Reply[T]], M],
    *,
    grace: float = GRACE,
    undo: Callable[[T], None] | None = None,
) -> T | None:
    """Ask, shielded, waiting at most `grace`: None when no answer came in time. A cancelled caller still
    receives the answer (and so can give back what it grants). An answer that comes too late goes to
    `undo`, when given. `ActorError`s propagate. An actor that answers at once (direct delivery, see
    kernel/actor.py) costs no cancel scope and no checkpoint."""
    reply: Reply[T] = Reply() if undo is None else _Undoable(undo)
    msg = make(reply)
    try:
        ref.tell_nowait(msg)  # an idle actor answers right here (direct delivery): no scope, no wait
    except MailboxFull:
        queued = False
    else:
        if reply.done:
            return reply.result()
        queued = True
    with trio.move_on_after(grace) as cs:
        cs.shield = True
        if not queued:
            await ref.tell(msg)
        return await reply.wait()
    if isinstance(reply, _Undoable):
        reply.abandon()
    return None


async def ask_restarting(ask: Callable[[], Awaitable[T]], *, waits: tuple[float, ...] = RESTART_WAITS) -> T:
    """`ask()`, asked again after each of `waits` while it fails with an `ActorError` (the actor is
    between two instances); the last `ActorError` propagates. `ask` looks the actor's ref up itself."""
    for wait in waits:
        try:
            return await ask()
        except ActorError as exc:
            log.info("actor_restarting", actor=exc.actor, retry_in_s=wait)
        await trio.sleep(wait)
    return await ask()


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
