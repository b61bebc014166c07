"""`Supervisor`: an actor that runs children, restarts them per OTP strategy, escalates when restarts pile up.

A supervisor is an `Actor[SupervisorCommand]`: one bounded mailbox, one ask path, one stop path. Adding
and removing children are asks through its `ActorRef` (`add_child` / `remove_child`); a child's exit is a
`ChildExited` message its own task puts in that mailbox. Restart decisions, additions and removals are
therefore serialised by the actor's loop, so a restart never races an operator removing the same child.

Addresses. Every child lives at an `Address` (actors/base.py) in its supervisor's table, and that table
lives in the supervisor's own address, up to the root, which holds the top table itself. A restarted
supervisor adopts its address and so finds the same table: every child, including those added at run
time, comes back with the same `ActorRef`, its next `incarnation` and a restart count that grew, however
far up the restart began. Only `remove_child` (or a temporary child's exit) forgets an address.

Stopping (on `stop()`, on cancellation from outside, or when the supervisor gives up):
- children are stopped one at a time in reverse start order: each is asked to stop, and the next is
  asked only once the previous one is gone;
- each child has until `min(asked + its shutdown, began + budget)`, where `budget` is the largest
  shutdown among the children: the graces overlap instead of adding up, so N hung children take the
  largest grace, not the sum. A child still running at its deadline is cancelled;
- a supervisor's stop, as its parent sees it, is bounded by its own `shutdown`: when that runs out the
  parent cancels it, and a cancelled supervisor cancels its whole subtree at once (nothing below it is
  shielded from its parent). Only a root (a supervisor nobody supervises) shields its orderly stop from
  outside cancellation, and that stop is bounded by its budget.
A stop that interrupts a restart or an `add_child` answers the asker (`ActorStopped`) and stops whatever
had started. Children are supervised with `except Exception`: cancellation always propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, assert_never

import structlog
import trio

from apikeyrouter.errors import ActorStopped, SupervisorEscalation
from apikeyrouter.kernel.actor import Actor, ActorRef, Home, Reply
from apikeyrouter.kernel.spec import Address, Child, ChildSpec, Restart, Strategy, SupervisorSpec, TreeNode, add_restart
from apikeyrouter.messages.system import AddChild, ChildExited, RemoveChild, SupervisorCommand
from apikeyrouter.observe import Event, SupervisorChildCrashed, SupervisorChildRestarted, SupervisorEscalated

__all__ = ["ChildInfo", "Supervisor"]

log = structlog.get_logger("apikeyrouter.supervisor")


class ChildInfo:
    """A row of `which_children()`."""

    __slots__ = ("id", "instance", "restart", "restarts", "status")

    def __init__(self, id: str, status: str, restarts: int, restart: Restart, instance: Child | None) -> None:
        self.id = id
        self.status = status
        self.restarts = restarts
        self.restart = restart
        self.instance = instance

    def __repr__(self) -> str:
        return f"ChildInfo(id={self.id!r}, status={self.status!r}, restarts={self.restarts})"


class _TaskStatus:
    """The `task_status` a child's `run()` reports its start through. One small object per child: a class
    defined inside `_child_task` cost ~2.4 KiB per child (a type object each), ~24 MiB at 10,000 keys."""

    __slots__ = ("slot", "was_started")

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.was_started = False

    def started(self, value: Any = None) -> None:
        self.was_started = True
        self.slot.up.set()


class _Slot:
    """What one supervisor instance knows of the child it runs at an address (dropped with the instance)."""

    __slots__ = ("address", "done", "expected_exit", "instance", "scope", "spec", "start_error", "status", "up")

    def __init__(self, address: Address, spec: ChildSpec) -> None:
        self.address = address
        self.spec = spec
        self.instance: Child | None = None
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.up = trio.Event()  # set once the instance has started, or has failed to
        self.start_error: Exception | None = None
        self.expected_exit = False
        self.status = "new"

    @property
    def live(self) -> bool:
        return self.instance is not None and not self.done.is_set()


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _spec_of(address: Address) -> ChildSpec:
    assert address.spec is not None, f"child address {address.name} has no spec"
    return address.spec


class Supervisor(Actor[SupervisorCommand]):
    kind = "supervisor"

    def __init__(
        self,
        name: str,
        spec: SupervisorSpec | None = None,
        children: Sequence[ChildSpec] = (),
        *,
        on_event: Callable[[Event], None] | None = None,
        mailbox: int = 64,
    ) -> None:
        """`children` are started in order the first time a supervisor runs at its address; a restarted
        one starts what its address's table holds instead. `on_event(event)` is told of crashes,
        restarts and escalations (the router publishes them on its event bus, so the debug channel shows
        them); it must not block or raise."""
        ids = [c.id for c in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate child ids under supervisor {name}: {ids}")
        super().__init__(name, mailbox=mailbox)
        self.spec = spec or SupervisorSpec()
        self._table: dict[str, Address] = {c.id: Address(c.id, c) for c in children}
        self._slots: dict[str, _Slot] = {}
        self._stamps: tuple[float, ...] = ()
        self._supervised = False
        self._children: trio.Nursery | None = None
        self._on_event = on_event

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- public API -----------------------------------------------------------------------------------

    def adopt(self, address: Home) -> None:
        """Become the next instance at `address`: its ref, its incarnation, and its table of children
        (the first instance there fills the table from its constructor's `children`)."""
        if not isinstance(address, Address):
            raise TypeError(f"a supervisor lives at a supervision tree's Address, not {type(address).__name__}")
        super().adopt(address)
        if address.children is None:
            address.children = self._table
        self._table = address.children
        self._supervised = True

    async def add_child(self, spec: ChildSpec) -> Child:
        """Start a child at run time (after the existing ones); returns the running instance. The child
        keeps its address across restarts of this supervisor and of its ancestors."""
        child: Child = await self.ref.ask(lambda r: AddChild(spec, r))
        return child

    async def remove_child(self, child_id: str) -> bool:
        """Stop a child (with its grace) and forget its address. False if there was no such child."""
        removed: bool = await self.ref.ask(lambda r: RemoveChild(child_id, r))
        return removed

    def child(self, child_id: str) -> Child | None:
        slot = self._slots.get(child_id)
        return slot.instance if slot is not None and child_id in self._table else None

    def which_children(self) -> list[ChildInfo]:
        rows = []
        for cid, address in self._table.items():
            slot = self._slots.get(cid)
            instance = slot.instance if slot is not None else None
            status = slot.status if slot is not None else "new"
            restarts = instance.restarts if instance is not None else 0
            rows.append(ChildInfo(cid, status, restarts, _spec_of(address).restart, instance))
        return rows

    def tree(self) -> TreeNode:
        node = super().tree()
        children = tuple(
            s.instance.tree() for cid, s in self._slots.items() if s.instance is not None and cid in self._table
        )
        return TreeNode(
            name=node.name,
            kind=node.kind,
            status=node.status,
            restarts=node.restarts,
            mailbox_depth=node.mailbox_depth,
            mailbox_capacity=node.mailbox_capacity,
            children=children,
            last_crash=node.last_crash,
        )

    # -- running --------------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ActorRef[SupervisorCommand]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # The children run in a nursery around the actor's own run, so that however the actor ends
        # (stop, crash, cancellation) they are stopped in order after it, before the supervisor is done.
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as children:
                self._children = children
                try:
                    await super().run(task_status=task_status)
                except Exception as exc:
                    # Raised below, outside the nursery, so the parent sees the exception itself.
                    failure = exc
                finally:
                    await self._stop_children()
        finally:
            self.status = "crashed" if failure is not None else "stopped"
        if failure is not None:
            self.last_crash = _describe(failure)
            raise failure

    async def pre_start(self) -> None:
        for address in list(self._table.values()):
            await self._start(address)

    async def receive(self, msg: SupervisorCommand) -> None:
        match msg:
            case ChildExited():
                await self._on_exit(msg)
            case AddChild(spec=spec, reply_to=reply):
                await self._add(spec, reply)
            case RemoveChild(child_id=child_id, reply_to=reply):
                address = self._table.pop(child_id, None)
                slot = self._slots.get(child_id)
                if slot is not None:
                    await self._stop_in_order([slot])
                    del self._slots[child_id]
                reply.send(address is not None)
            case _:
                assert_never(msg)

    async def _add(self, spec: ChildSpec, reply: Reply[Child]) -> None:
        if spec.id in self._table:
            reply.fail(ValueError(f"child {spec.id!r} already exists under {self.name}"))
            return
        address = self._table[spec.id] = Address(spec.id, spec)
        try:
            child = await self._start(address)
        except Exception as exc:
            del self._table[spec.id]
            self._slots.pop(spec.id, None)
            reply.fail(exc)
        except BaseException:
            # Interrupted by a stop: the asker hears ActorStopped; a child that did start is stopped
            # with the others (its slot stays), but it is not part of the table a successor inherits.
            del self._table[spec.id]
            raise
        else:
            reply.send(child)

    async def _start(self, address: Address) -> Child:
        """Start the next instance at `address` (its first, or a restart)."""
        assert self._children is not None
        spec = _spec_of(address)
        instance = spec.start()
        instance.adopt(address)
        if instance.restarts and spec.on_restart is not None:
            spec.on_restart(instance, instance.restarts)
        slot = self._slots.get(address.name)
        if slot is None:
            slot = self._slots[address.name] = _Slot(address, spec)
        slot.instance = instance
        slot.scope = None
        slot.done = trio.Event()
        slot.up = trio.Event()
        slot.start_error = None
        slot.expected_exit = False
        slot.status = "starting"
        # Not `nursery.start`: a start interrupted by a stop would leave the child in `start`'s own
        # nursery, waited for by the very loop that has to stop it. Here the child runs in the
        # children's nursery from its first moment, so an interrupted start is stopped like the rest.
        self._children.start_soon(self._child_task, slot, instance, name=f"{self.name}/{address.name}")
        await slot.up.wait()
        if slot.start_error is not None:
            slot.status = "crashed"
            address.last_crash = _describe(slot.start_error)
            raise slot.start_error
        slot.status = "running"
        return instance

    async def _child_task(self, slot: _Slot, instance: Child) -> None:
        status = _TaskStatus(slot)
        reason: Exception | None = None
        try:
            # Shielded: outside cancellation must not reach a child; only its supervisor stops (or
            # cancels) it, through this scope.
            with trio.CancelScope(shield=True) as scope:
                slot.scope = scope
                try:
                    await instance.run(task_status=status)
                except Exception as exc:
                    reason = exc
        finally:
            slot.done.set()
            started = status.was_started
            if not started:
                slot.start_error = reason or RuntimeError(f"child {slot.spec.id} exited before it finished starting")
                slot.up.set()
        if not started or slot.expected_exit or slot.instance is not instance:
            return
        slot.status = "crashed" if reason is not None else "exited"
        try:
            # Shielded: the report must reach the loop even while the supervisor is being stopped; the
            # wait ends when the loop reads it or the mailbox closes (every way the supervisor ends).
            with trio.CancelScope(shield=True):
                await self._tell_self(ChildExited(slot.spec.id, instance, reason))
        except ActorStopped:
            pass

    async def _on_exit(self, event: ChildExited) -> None:
        slot = self._slots.get(event.child_id)
        address = self._table.get(event.child_id)
        if slot is None or address is None or slot.instance is not event.instance:
            return
        crashed = event.reason is not None
        spec = slot.spec
        restarts = event.instance.restarts
        if event.reason is not None:
            reason = address.last_crash = _describe(event.reason)
            log.warning(
                "child_crashed",
                supervisor=self.name,
                child=spec.id,
                reason=reason,
                restarts=restarts,
                restart_type=spec.restart.value,
            )
            self._emit(SupervisorChildCrashed(self.name, spec.id, reason, restarts, trio.current_time()))
        else:
            log.info("child_exited", supervisor=self.name, child=spec.id, restart_type=spec.restart.value)
        restart = spec.restart is Restart.PERMANENT or (spec.restart is Restart.TRANSIENT and crashed)
        if not restart:
            del self._table[spec.id]
            del self._slots[spec.id]
            return
        await self._restart_from(spec.id, event.reason)

    def _group(self, child_id: str) -> list[str]:
        ids = list(self._table)
        match self.spec.strategy:
            case Strategy.ONE_FOR_ONE:
                return [child_id]
            case Strategy.ONE_FOR_ALL:
                return ids
            case Strategy.REST_FOR_ONE:
                return ids[ids.index(child_id) :]
            case _:
                assert_never(self.spec.strategy)

    async def _restart_from(self, child_id: str, reason: Exception | None) -> None:
        """Apply the strategy for the child `child_id` having exited; retries failed starts."""
        while True:
            now = trio.current_time()
            self._stamps, exceeded = add_restart(
                self._stamps, now, intensity=self.spec.intensity, period=self.spec.period
            )
            if exceeded:
                log.error(
                    "supervisor_escalating",
                    supervisor=self.name,
                    child=child_id,
                    reason=_describe(reason) if reason is not None else "normal exit",
                    intensity=self.spec.intensity,
                    period=self.spec.period,
                )
                self._emit(SupervisorEscalated(self.name, child_id, self.spec.intensity, trio.current_time()))
                raise SupervisorEscalation(self.name, child_id, self.spec.intensity, self.spec.period)
            group = self._group(child_id)
            await self._stop_in_order([self._slots[cid] for cid in reversed(group) if cid in self._slots])
            try:
                for cid in group:
                    address = self._table[cid]
                    if cid != child_id and _spec_of(address).restart is Restart.TEMPORARY:
                        del self._table[cid]
                        self._slots.pop(cid, None)
                        continue
                    await self._restart(address)
            except Exception as exc:
                log.warning("child_start_failed", supervisor=self.name, child=child_id, reason=_describe(exc))
                reason = exc
                continue
            return

    async def _restart(self, address: Address) -> None:
        restarts = address.incarnations  # the instance about to start is this many restarts in
        log.info("child_restarted", supervisor=self.name, child=address.name, restarts=restarts)
        self._emit(SupervisorChildRestarted(self.name, address.name, restarts, trio.current_time()))
        await self._start(address)

    # -- stopping -------------------------------------------------------------------------------------

    async def _stop_in_order(self, slots: Sequence[_Slot]) -> None:
        """Stop `slots` one at a time, in the given order, within the largest of their graces (see the
        module docstring). Not shielded: a cancellation here comes from whoever is stopping *us*."""
        live = [s for s in slots if s.live]
        for slot in slots:
            if not slot.live and slot.instance is not None:
                slot.status = "stopped"
        if not live:
            return
        end = trio.current_time() + max(s.spec.shutdown for s in live)
        for slot in live:
            await self._stop_slot(slot, min(trio.current_time() + slot.spec.shutdown, end))

    async def _stop_slot(self, slot: _Slot, deadline: float) -> None:
        instance = slot.instance
        assert instance is not None
        slot.expected_exit = True
        slot.status = "stopping"
        instance.stop()
        with trio.move_on_at(deadline):
            await slot.done.wait()
        if not slot.done.is_set():
            log.warning("child_killed", supervisor=self.name, child=slot.spec.id, grace=slot.spec.shutdown)
            self._kill(slot, f"{slot.spec.id} did not stop within its grace")
            await slot.done.wait()  # a cancelled child ends at its next checkpoint
        slot.status = "stopped"

    def _kill(self, slot: _Slot, reason: str) -> None:
        slot.expected_exit = True
        if slot.scope is not None and not slot.done.is_set():
            slot.scope.cancel(reason=reason)

    async def _stop_children(self) -> None:
        """The supervisor's own end: every child stopped in reverse order, bounded as described above."""
        if self.status != "crashed":
            self.status = "stopping"
        slots = list(reversed(self._slots.values()))
        try:
            # A root shields its orderly stop from the outside cancellation that may have started it
            # (bounded by its budget); below the root the only cancellation is the parent's kill.
            with trio.CancelScope(shield=not self._supervised):
                await self._stop_in_order(slots)
        finally:
            for slot in slots:
                self._kill(slot, f"supervisor {self.name} was cancelled while stopping")
            self._children = None
