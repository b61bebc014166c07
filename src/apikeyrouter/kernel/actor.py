"""The actor kernel: `Actor`, `ActorRef`, `Reply` (one-shot reply slot) and `ActorSnapshot`.

An actor is a task that alone owns its state and reads a bounded mailbox (a trio memory channel).
It is started with `ref = await nursery.start(actor.run)`. Others talk to it through its `ActorRef`:

- `await ref.tell(msg)` waits for mailbox space; `ref.tell_nowait(msg)` raises `MailboxFull` instead.
- `await ref.ask(lambda reply: Msg(..., reply_to=reply))` sends a message carrying a one-shot `Reply`
  and waits for the answer. The caller owns the deadline (`with trio.fail_after(...)`).

Direct delivery (the fast path): when the target actor is idle -- its loop is parked on an empty mailbox,
no message has been handed to it that it has not run yet, it is running (not draining, not asked to stop)
-- and its `receive` is a plain `def`, `tell`/`tell_nowait`/`ask` run its `receive(msg)` at once in the
sender's task instead of queuing. trio is cooperative and such a handler cannot await, so this is the
actor taking the message next: same handler, same order, one writer. Otherwise (busy, queued messages,
an `async def` receive, or `direct = False` on the class) the mailbox path. The hand-off race: a memory
channel hands a sent value straight to a parked receiver, so every send into the mailbox marks the loop
awake (`_park`), and only the loop marks it parked again, when it finds the mailbox empty. While a direct
handler runs the actor is not idle either: a send that reaches it then (from a nested delivery) queues.
The accounting is the loop's: `handled`, asks left unanswered tracked until the actor stops, and an
exception is the actor's crash (the asker gets `ActorCrashed`, the loop raises it to the supervisor). An
awaitable returned by a plain-`def` receive is awaited by the loop before it reads anything else. A
direct `ask` is a cancellation point (`checkpoint_if_cancelled`), not a schedule point: the request path
yields at its upstream call right after, and a schedule point per ask would cost more than the ask
(benchmarks/kernel.py). A loop of nothing but asks must checkpoint itself. An actor cancelled from outside
while parked (not through `stop`, as its supervisor does) may take one more message directly before its
loop sees the cancellation, as if the message had come just before it.

Failure semantics (the promise every other module relies on):
- expected failures are reply *values*;
- an exception while handling a message is the actor's crash: the asker of that message gets
  `ActorCrashed`, the exception propagates to the supervisor;
- when the actor stops or crashes, every queued ask, the ask being handled when a stop interrupts it,
  and every ask still in progress (a `Reply` not yet answered, e.g. handed to a background task) is
  answered with `ActorStopped` / `ActorCrashed`, so no ask ever hangs because its actor died;
- a reply to a caller that has gone away is dropped quietly.

Addresses: a supervised actor lives at an `Address` (kernel/spec.py) that its supervision tree keeps (see
supervisors/supervisor.py). Every instance started there is handed the address by `adopt` before it
starts, and takes from it
- the same `ActorRef` object: holders of the ref reach each new instance without being told, whether
  the actor was restarted by its own supervisor or because an ancestor restarted its subtree (between
  two instances a tell fails with `ActorStopped`);
- its `incarnation`: 0 for the first instance at the address, one more for every instance started
  there since, never reused while the address exists. `restarts` is the same number (the instances
  that ran there before this one). Use it to keep identifiers unique across instances.
An actor run on its own (no supervisor) is incarnation 0 with a ref of its own.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import attrs
import trio

from apikeyrouter.errors import ActorCrashed, ActorStopped, MailboxFull
from apikeyrouter.kernel.reply import Reply

__all__ = ["Actor", "ActorRef", "ActorSnapshot", "Home", "Reply", "TreeNode"]

T = TypeVar("T")
M = TypeVar("M")

_WOKEN: Any = object()  # handed to the parked loop to run `_park_cont`; never queued, never received by `receive`

# Where an actor's receive loop is (`Actor._park`), for direct delivery (module docstring):
_AWAKE = 0  # running, or a message was handed to it that it has not run yet: the mailbox path
_PARKED = 1  # waiting on an empty mailbox, nothing handed to it: a message may be handled at once
_DIRECT = 2  # parked, and a message is being handled directly right now (a nested send must queue)


@attrs.frozen
class ActorSnapshot:
    """What anyone may know about an actor at one moment. `state` is the actor's own frozen summary."""

    name: str
    kind: str
    status: str
    mailbox_depth: int
    mailbox_capacity: int
    handled: int
    restarts: int
    state: Any = None
    last_crash: str | None = None


@attrs.frozen
class TreeNode:
    """One node of a running supervision tree, as shown by `which_children()`, `/state` and `inspect`."""

    name: str
    kind: str
    status: str
    restarts: int
    mailbox_depth: int | None = None
    mailbox_capacity: int | None = None
    children: tuple[TreeNode, ...] = ()
    state: Any = None
    last_crash: str | None = None


class ActorRef(Generic[M]):
    """The address of an actor: stable across restarts of the actor behind it."""

    __slots__ = ("_actor", "_send", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._send: trio.MemorySendChannel[M] | None = None
        self._actor: Actor[M] | None = None

    def _bind(self, actor: Actor[M], send: trio.MemorySendChannel[M]) -> None:
        self._actor = actor
        self._send = send

    @property
    def alive(self) -> bool:
        return self._actor is not None and self._actor.status == "running"

    async def tell(self, msg: M) -> None:
        actor = self._actor
        if actor is not None:
            if actor._park == _PARKED:
                await trio.lowlevel.checkpoint_if_cancelled()  # raises if cancelled; otherwise does not yield
                actor._direct(msg)
                return
            actor._park = _AWAKE  # whatever the send hands the loop runs before any direct delivery
        send = self._send
        if send is None:
            raise ActorStopped(self.name, "is not running")
        try:
            await send.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None

    def tell_nowait(self, msg: M) -> None:
        actor = self._actor
        if actor is not None:
            if actor._park == _PARKED:
                actor._direct(msg)
                return
            actor._park = _AWAKE
        send = self._send
        if send is None:
            raise ActorStopped(self.name, "is not running")
        try:
            send.send_nowait(msg)
        except trio.WouldBlock:
            raise MailboxFull(self.name, self.capacity) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None

    async def ask(self, make: Callable[[Reply[T]], M]) -> T:
        reply: Reply[T] = Reply()
        await self.put(make(reply))
        # Handled at once (direct delivery, module docstring): no scheduler pass. The request path's
        # next step (its upstream call) is the schedule point.
        return reply.result() if reply.done else await reply.wait()

    async def put(self, msg: M) -> None:
        """`tell` for a sender that checkpoints right after (an ask waits for its reply): a message that
        fits goes in at once (or is handled at once, by direct delivery), sparing the scheduler pass
        `tell` makes; a full mailbox is waited for. As with `tell`, a caller already cancelled sends
        nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()  # raises if cancelled; otherwise does not yield
        try:
            self.tell_nowait(msg)
        except MailboxFull:
            await self.tell(msg)

    def ask_nowait(self, make: Callable[[Reply[T]], M]) -> Reply[T]:
        """Send an ask without waiting for mailbox space; `await reply.wait()` later."""
        reply: Reply[T] = Reply()
        self.tell_nowait(make(reply))
        return reply

    @property
    def capacity(self) -> int:
        return self._actor.mailbox_capacity if self._actor is not None else 0

    def snapshot(self) -> ActorSnapshot:
        if self._actor is None:
            return ActorSnapshot(self.name, "actor", "unbound", 0, 0, 0, 0)
        return self._actor.snapshot()

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"


class Home(Protocol):
    """What an instance needs of the place it runs at (a supervisor's `Address`, kernel/spec.py): the ref
    to bind, how many instances ran there before, and the last crash there."""

    ref: ActorRef[Any] | None
    incarnations: int
    last_crash: str | None


def _reply_of(msg: object) -> Reply[Any] | None:
    reply = getattr(msg, "reply_to", None)
    return reply if isinstance(reply, Reply) else None


class Actor(Generic[M]):
    """Base class. Subclasses implement `receive` (dispatch with `match` + `assert_never`).

    `receive` is a plain `def` when it only changes state (each transition is then atomic); it may
    be `async def` when it must await, but it must never await upstream I/O: long work goes to
    `self.nursery` (a nursery that lives as long as the actor).
    """

    kind: ClassVar[str] = "actor"
    direct: ClassVar[bool] = True
    """May take direct delivery (module docstring) when `receive` is a plain `def`; False opts out."""
    _direct_ok: ClassVar[bool] = True  # `direct` and a plain-`def` receive: set per class (__init_subclass__)

    # Set on an instance only when they happen (class defaults otherwise): with every field an instance
    # attribute the key actor had 31, past CPython's 30 shared keys, and each instance paid for a dict of
    # its own (~1.5 KB: 20 MB at 10,000 keys).
    _park_cont: tuple[Reply[Any] | None, Awaitable[None]] | None = None  # what a direct handler left to await
    _direct_crash: Exception | None = None  # what a direct delivery crashed with

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._direct_ok = cls.direct and not inspect.iscoroutinefunction(cls.receive)

    def __init__(self, name: str, *, mailbox: int = 64) -> None:
        if not (isinstance(mailbox, int) and 0 < mailbox < math.inf):
            raise ValueError("an actor's mailbox must be bounded: a positive integer capacity")
        self.name = name
        self.mailbox_capacity = mailbox
        self.status = "new"
        self.handled = 0
        self.incarnation = 0
        self.last_crash: str | None = None
        self.ref: ActorRef[M] = ActorRef(name)
        self._inbox: trio.MemorySendChannel[M] | None = None
        self.draining = False  # stopping after the queued messages (stop_after_queue)
        self._recv: trio.MemoryReceiveChannel[M] | None = None
        self._pending: set[Reply[Any]] = set()
        self._loop_scope: trio.CancelScope | None = None
        self._stop_requested = False
        self._nursery: trio.Nursery | None = None
        self._park = _AWAKE

    # -- hooks for subclasses -------------------------------------------------------------------------

    def receive(self, msg: M) -> Awaitable[None] | None:
        raise NotImplementedError

    async def pre_start(self) -> None:
        """Runs before the ref is handed out. `self.restarts > 0` means this is a restart: restore state."""

    async def post_stop(self) -> None:
        """Graceful cleanup after the mailbox stops being read (runs under the supervisor's grace)."""

    def state_summary(self) -> Any:
        """A frozen value describing the actor's own state, for snapshots."""
        return None

    # -- kernel ---------------------------------------------------------------------------------------

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"actor {self.name} is not running")
        return self._nursery

    @property
    def handling_direct(self) -> bool:
        """True while `receive` runs for a directly delivered message (module docstring): the mailbox is
        empty then, so a handler that reads more of it at once (the store writer) need not look."""
        return self._park == _DIRECT

    @property
    def restarts(self) -> int:
        """Instances that ran at this actor's address before this one (the same number as `incarnation`)."""
        return self.incarnation

    def adopt(self, address: Home) -> None:
        """Become the next instance at `address` (its supervisor calls this before `run`): bind the
        address's ref (the first instance gives it its own), take the next incarnation number."""
        if address.ref is None:
            address.ref = self.ref
        else:
            self.ref = address.ref
        self.incarnation = address.incarnations
        address.incarnations += 1
        self.last_crash = address.last_crash

    def stop(self) -> None:
        """Ask the actor to finish: stop reading the mailbox, answer queued asks with `ActorStopped`,
        run `post_stop`, and let background work in `self.nursery` finish (its supervisor cancels it
        when the grace runs out; asks it leaves unanswered then get `ActorStopped`)."""
        self._stop_requested = True
        self._park = _AWAKE
        if self._loop_scope is not None:
            self._loop_scope.cancel(reason=f"actor {self.name} asked to stop")

    def stop_after_queue(self) -> None:
        """Stop once the messages already in the mailbox are handled (an actor whose queued tells carry
        what must not be lost: settlements, charges): the mailbox closes, so new tells and asks fail with
        `ActorStopped`, and `draining` tells `receive` to refuse new work still queued behind them."""
        inbox = self._inbox
        if self.status == "running" and inbox is not None:
            self._park = _AWAKE  # a draining actor takes nothing directly
            self.draining = True
            inbox.close()  # the loop ends once the queue is read
        else:
            # Not reading a mailbox yet (starting) or any more: the plain stop. Not `self.stop()`: an actor
            # whose `stop` is this method (the key actor's) would recurse without end.
            Actor.stop(self)

    def snapshot(self) -> ActorSnapshot:
        depth = self._recv.statistics().current_buffer_used if self._recv is not None else 0
        return ActorSnapshot(
            name=self.name,
            kind=self.kind,
            status=self.status,
            mailbox_depth=depth,
            mailbox_capacity=self.mailbox_capacity,
            handled=self.handled,
            restarts=self.restarts,
            state=self.state_summary(),
            last_crash=self.last_crash,
        )

    async def run(self, *, task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[M](self.mailbox_capacity)
        self._inbox = send
        self._recv = recv
        self.status = "starting"
        crash: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.pre_start()
                self.ref._bind(self, send)
                self.status = "running"
                task_status.started(self.ref)
                try:
                    await self._loop(recv)
                except Exception as exc:
                    # Raised below, outside the nursery, so supervisors see the exception itself
                    # rather than an ExceptionGroup around it.
                    crash = exc
                    self.last_crash = f"{type(exc).__name__}: {exc}"
                    self.status = "crashed"
                    self._close(send, recv, crash)
                    nursery.cancel_scope.cancel(reason=f"actor {self.name} crashed")
                else:
                    self.status = "stopping"
                    self._close(send, recv, None)
                    await self.post_stop()
        finally:
            if crash is None:
                # Cancelled from outside, or post_stop failed: still never leave an ask hanging.
                self._close(send, recv, None)
                self.status = "stopped"
            # Background work has finished or been cancelled: whatever it did not answer is answered now.
            self._fail_pending(crash)
            self._nursery = None
        if crash is not None:
            raise crash

    async def _loop(self, recv: trio.MemoryReceiveChannel[M]) -> None:
        with trio.CancelScope() as scope:
            self._loop_scope = scope
            if self._stop_requested:
                return
            if not self._direct_ok:
                await self._read_only_mailbox(recv)
                return
            try:
                await self._read_mailbox(recv)
            finally:
                self._park = _AWAKE
                self._abandon_park_cont()
        if self._direct_crash is not None:
            raise self._direct_crash

    async def _read_only_mailbox(self, recv: trio.MemoryReceiveChannel[M]) -> None:
        """The receive loop of an actor that takes no direct delivery (an `async def` receive)."""
        async for msg in recv:
            reply = _reply_of(msg)
            try:
                result = self.receive(msg)
                if result is not None:
                    await result
            except Exception as exc:
                if reply is not None:
                    reply.fail(ActorCrashed(self.name, exc))
                raise
            except BaseException:
                # A stop (or its supervisor's kill) interrupted the message: its ask is answered
                # with the rest when the actor finishes, never left waiting.
                self._track_reply(reply)
                raise
            self.handled += 1
            self._track_reply(reply)

    async def _read_mailbox(self, recv: trio.MemoryReceiveChannel[M]) -> None:
        """The receive loop of an actor that may take direct delivery: take the next message (parking
        on an empty mailbox) and handle it; first finish the work a direct delivery left (`_park_cont`)."""
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                try:
                    msg: Any = recv.receive_nowait()
                except trio.WouldBlock:
                    self._park = _PARKED  # until a send hands it a message (module docstring)
                    try:
                        msg = await recv.receive()
                    finally:
                        self._park = _AWAKE
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()  # as `receive` does: fair, loses nothing
            except trio.EndOfChannel:
                # A direct handler that ended the mailbox (`stop_after_queue`) and returned a wait: the
                # loop sees the end at once, but the wait is still that message's, run before the end.
                cont = self._park_cont
                if cont is not None:
                    self._park_cont = None
                    await self._finish_handled(cont[0], cont[1])
                return
            cont = self._park_cont
            if cont is not None:
                self._park_cont = None
                await self._finish_handled(cont[0], cont[1])
            if self._direct_crash is not None:  # a direct delivery crashed the actor: stop here
                reply = _reply_of(msg)
                if reply is not None:
                    reply.fail(ActorCrashed(self.name, self._direct_crash))
                return
            if msg is _WOKEN:  # woken only for `_park_cont`
                continue
            reply = _reply_of(msg)
            try:
                result = self.receive(msg)
            except Exception as exc:
                if reply is not None:
                    reply.fail(ActorCrashed(self.name, exc))
                raise
            except BaseException:
                self._track_reply(reply)
                raise
            if result is not None:
                await self._finish_handled(reply, result)
            else:
                self.handled += 1
                self._track_reply(reply)

    async def _finish_handled(self, reply: Reply[Any] | None, result: Awaitable[None]) -> None:
        """Await what a plain-`def` receive returned (the rare wait, e.g. for room in the store), with
        the accounting of the message it belongs to."""
        try:
            await result
        except Exception as exc:
            if reply is not None:
                reply.fail(ActorCrashed(self.name, exc))
            raise
        except BaseException:
            self._track_reply(reply)
            raise
        self.handled += 1
        self._track_reply(reply)

    def _abandon_park_cont(self) -> None:
        """The loop ends with a direct delivery's wait not run (cancelled from outside just after the
        message was taken): its ask is answered with the rest when the actor finishes, never left waiting."""
        cont = self._park_cont
        if cont is None:
            return
        self._park_cont = None
        reply, result = cont
        if inspect.iscoroutine(result):
            result.close()  # never to run: no "never awaited" warning
        self._track_reply(reply)

    def _track_reply(self, reply: Reply[Any] | None) -> None:
        """An ask not answered by its handler (answered later by a background task, or interrupted by a
        stop): tracked so a stop or crash still answers it."""
        if reply is not None and not reply.done:
            reply._owner = self._pending
            self._pending.add(reply)

    def _direct(self, msg: M) -> None:
        """Direct delivery: handle `msg` now, in the sender's task, while the loop stays parked. Only
        called when `_park` is `_PARKED` (the message would have been the loop's next)."""
        self._park = _DIRECT
        reply = _reply_of(msg)
        try:
            result = self.receive(msg)
        except Exception as exc:
            # The actor's crash, as in its loop: the asker hears so, and the loop raises it.
            if reply is not None:
                reply.fail(ActorCrashed(self.name, exc))
            self._park = _AWAKE
            self._direct_crash = exc
            if self._loop_scope is not None:
                self._loop_scope.cancel(reason=f"actor {self.name} crashed")
            return
        except BaseException:
            self._park = _AWAKE
            self._track_reply(reply)
            raise
        if result is None:
            self.handled += 1
            self._track_reply(reply)
            if self._park == _DIRECT:  # else a nested send handed the loop a message: it runs next
                self._park = _PARKED
            return
        # The handler must wait (rare): its loop does that before it reads anything else.
        self._park_cont = (reply, result)
        if self._park == _DIRECT:  # else a nested send handed the loop a message: it runs this first
            self._park = _AWAKE
            inbox = self._inbox
            if inbox is not None:
                # The loop waits in `receive`: the channel hands the marker straight to it (it is never
                # queued, so nothing that reads the mailbox sees it).
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    inbox.send_nowait(_WOKEN)

    async def _tell_self(self, msg: M) -> None:
        """Queue a message in this actor's own mailbox. Works from the moment `run` opens the mailbox,
        before the ref is handed out (the supervisor's children report their exits this way while it
        is still starting them); raises `ActorStopped` once the mailbox is closed."""
        inbox = self._inbox
        if inbox is None:
            raise ActorStopped(self.name, "is not running")
        self._park = _AWAKE  # always the mailbox: what it hands the loop runs before any direct delivery
        try:
            await inbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None

    def _close(
        self, send: trio.MemorySendChannel[M], recv: trio.MemoryReceiveChannel[M], crash: BaseException | None
    ) -> None:
        """Stop accepting messages and answer every queued ask (asks in progress may still finish)."""
        self._loop_scope = None
        error: Exception = ActorCrashed(self.name, crash) if crash is not None else ActorStopped(self.name)
        send.close()
        while True:
            try:
                msg = recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            reply = _reply_of(msg)
            if reply is not None:
                reply.fail(error)
        recv.close()

    def _fail_pending(self, crash: BaseException | None) -> None:
        error: Exception = ActorCrashed(self.name, crash) if crash is not None else ActorStopped(self.name)
        for reply in list(self._pending):
            reply.fail(error)
        self._pending.clear()

    def tree(self) -> TreeNode:
        snap = self.snapshot()
        return TreeNode(
            name=snap.name,
            kind=snap.kind,
            status=snap.status,
            restarts=snap.restarts,
            mailbox_depth=snap.mailbox_depth,
            mailbox_capacity=snap.mailbox_capacity,
            state=snap.state,
            last_crash=snap.last_crash,
        )
