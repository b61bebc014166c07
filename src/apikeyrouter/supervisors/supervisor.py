"""`Supervisor`: runs children, restarts them per OTP strategy, escalates when restarts pile up.

Children run in the supervisor's nursery, each inside a cancel scope that shields it from outside
cancellation: only its supervisor stops it. That is what makes shutdown orderly. When the supervisor is
cancelled (or asked to stop, or gives up), it stops its children one by one in reverse start order,
each asked to finish and given its `shutdown` grace (shielded) before it is cancelled.

Restart decisions, child additions and removals are all serialised through one control loop, so a
restart never races an operator removing the same child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import structlog
import trio

from apikeyrouter.actors.base import Reply
from apikeyrouter.errors import ActorStopped, SupervisorEscalation
from apikeyrouter.messages.system import AddChild, ChildExited, RemoveChild, SupervisorCommand
from apikeyrouter.observe import Event, SupervisorChildCrashed, SupervisorChildRestarted, SupervisorEscalated
from apikeyrouter.supervisors.spec import Child, ChildSpec, Restart, Strategy, SupervisorSpec, TreeNode, add_restart

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


class _Slot:
    __slots__ = ("done", "expected_exit", "instance", "restarts", "scope", "spec", "status")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.instance: Child | None = None
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.expected_exit = False
        self.restarts = 0
        self.status = "new"


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class Supervisor:
    kind: ClassVar[str] = "supervisor"

    def __init__(
        self,
        name: str,
        spec: SupervisorSpec | None = None,
        children: Sequence[ChildSpec] = (),
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        """`on_event(event)` is told of crashes, restarts and escalations (the router publishes them
        on its event bus, so the debug channel shows them); it must not block or raise."""
        ids = [c.id for c in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate child ids under supervisor {name}: {ids}")
        self.name = name
        self.spec = spec or SupervisorSpec()
        self.restarts = 0
        self.status = "new"
        self.last_crash: str | None = None
        self._specs: list[ChildSpec] = list(children)
        self._slots: dict[str, _Slot] = {}
        self._stamps: tuple[float, ...] = ()
        self._control: trio.MemorySendChannel[SupervisorCommand] | None = None
        self._loop_scope: trio.CancelScope | None = None
        self._stop_requested = False
        self._nursery: trio.Nursery | None = None
        self._on_event = on_event

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- public API -----------------------------------------------------------------------------------

    def adopt(self, previous: Supervisor) -> None:
        """A restarted supervisor keeps its predecessor's children, including those added at run time."""
        self._specs = list(previous._specs)
        self._on_event = self._on_event or previous._on_event
        self.restarts = previous.restarts + 1
        self.last_crash = previous.last_crash

    def stop(self) -> None:
        self._stop_requested = True
        if self._loop_scope is not None:
            self._loop_scope.cancel(reason=f"supervisor {self.name} asked to stop")

    async def add_child(self, spec: ChildSpec) -> Child:
        """Start a child at run time (after the existing ones); returns the running instance."""
        child: Child = await self._ask(lambda r: AddChild(spec, r))
        return child

    async def remove_child(self, child_id: str) -> bool:
        """Stop a child (with its grace) and forget it. False if there was no such child."""
        removed: bool = await self._ask(lambda r: RemoveChild(child_id, r))
        return removed

    def child(self, child_id: str) -> Child | None:
        slot = self._slots.get(child_id)
        return slot.instance if slot is not None else None

    def which_children(self) -> list[ChildInfo]:
        return [ChildInfo(cid, s.status, s.restarts, s.spec.restart, s.instance) for cid, s in self._slots.items()]

    def tree(self) -> TreeNode:
        children = tuple(s.instance.tree() for s in self._slots.values() if s.instance is not None)
        return TreeNode(
            name=self.name,
            kind=self.kind,
            status=self.status,
            restarts=self.restarts,
            children=children,
            last_crash=self.last_crash,
        )

    # -- running --------------------------------------------------------------------------------------

    async def _ask(self, make: Any) -> Any:
        control = self._control
        if control is None or self.status != "running":
            raise ActorStopped(self.name, "is not running")
        reply: Reply[Any] = Reply()
        try:
            await control.send(make(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None
        return await reply.wait()

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[SupervisorCommand](64)
        self._control = send
        self.status = "starting"
        escalation: SupervisorEscalation | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for spec in list(self._specs):
                        await self._start_new(spec)
                    self.status = "running"
                    task_status.started(self)
                    await self._control_loop(recv)
                except SupervisorEscalation as exc:
                    escalation = exc
                finally:
                    self.status = "stopping"
                    send.close()
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                    self._fail_pending(recv)
        finally:
            self._nursery = None
            self._control = None
            self.status = "crashed" if escalation is not None else "stopped"
        if escalation is not None:
            self.last_crash = str(escalation)
            raise escalation

    async def _control_loop(self, recv: trio.MemoryReceiveChannel[SupervisorCommand]) -> None:
        with trio.CancelScope() as scope:
            self._loop_scope = scope
            if self._stop_requested:
                return
            async for cmd in recv:
                match cmd:
                    case ChildExited():
                        await self._on_exit(cmd)
                    case AddChild(spec=spec, reply_to=reply):
                        if spec.id in self._slots:
                            reply.fail(ValueError(f"child {spec.id!r} already exists under {self.name}"))
                            continue
                        try:
                            child = await self._start_new(spec)
                        except Exception as exc:
                            reply.fail(exc)
                        else:
                            self._specs.append(spec)
                            reply.send(child)
                    case RemoveChild(child_id=child_id, reply_to=reply):
                        slot = self._slots.pop(child_id, None)
                        self._specs = [s for s in self._specs if s.id != child_id]
                        if slot is not None:
                            await self._stop_slot(slot)
                        reply.send(slot is not None)
        self._loop_scope = None

    def _fail_pending(self, recv: trio.MemoryReceiveChannel[SupervisorCommand]) -> None:
        while True:
            try:
                cmd = recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(cmd, AddChild | RemoveChild):
                cmd.reply_to.fail(ActorStopped(self.name))
        recv.close()

    async def _start_new(self, spec: ChildSpec) -> Child:
        slot = _Slot(spec)
        self._slots[spec.id] = slot
        try:
            return await self._start_instance(slot, spec.start())
        except BaseException:
            del self._slots[spec.id]
            raise

    async def _start_instance(self, slot: _Slot, instance: Child) -> Child:
        assert self._nursery is not None
        slot.instance = instance
        slot.done = trio.Event()
        slot.expected_exit = False
        slot.status = "starting"
        await self._nursery.start(self._child_task, slot, instance)
        slot.status = "running"
        return instance

    async def _child_task(
        self, slot: _Slot, instance: Child, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started()

        reason: Exception | None = None
        try:
            # Shielded: outside cancellation must not reach a child; its supervisor stops it in order.
            with trio.CancelScope(shield=True) as scope:
                slot.scope = scope
                try:
                    await instance.run(task_status=_Status())
                except Exception as exc:
                    if not started:
                        raise
                    reason = exc
        finally:
            slot.done.set()
        if not started:
            raise RuntimeError(f"child {slot.spec.id} exited before it finished starting")
        if slot.expected_exit or slot.instance is not instance:
            return
        slot.status = "crashed" if reason is not None else "exited"
        control = self._control
        if control is not None:
            try:
                # Shielded: the exit report must reach the loop even while the supervisor is being cancelled.
                with trio.CancelScope(shield=True):
                    await control.send(ChildExited(slot.spec.id, instance, reason))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _on_exit(self, event: ChildExited) -> None:
        slot = self._slots.get(event.child_id)
        if slot is None or slot.instance is not event.instance:
            return
        crashed = event.reason is not None
        spec = slot.spec
        if crashed:
            assert event.reason is not None
            reason = _describe(event.reason)
            log.warning(
                "child_crashed",
                supervisor=self.name,
                child=spec.id,
                reason=reason,
                restarts=slot.restarts,
                restart_type=spec.restart.value,
            )
            self._emit(SupervisorChildCrashed(self.name, spec.id, reason, slot.restarts, trio.current_time()))
        else:
            log.info("child_exited", supervisor=self.name, child=spec.id, restart_type=spec.restart.value)
        restart = spec.restart is Restart.PERMANENT or (spec.restart is Restart.TRANSIENT and crashed)
        if not restart:
            del self._slots[spec.id]
            self._specs = [s for s in self._specs if s.id != spec.id]
            return
        await self._restart_from(spec.id, event.reason)

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
            ids = list(self._slots)
            idx = ids.index(child_id)
            match self.spec.strategy:
                case Strategy.ONE_FOR_ONE:
                    group = [child_id]
                case Strategy.ONE_FOR_ALL:
                    group = ids
                case Strategy.REST_FOR_ONE:
                    group = ids[idx:]
            for cid in reversed(group):
                if cid != child_id:
                    await self._stop_slot(self._slots[cid])
            try:
                for cid in group:
                    slot = self._slots[cid]
                    if cid != child_id and slot.spec.restart is Restart.TEMPORARY:
                        del self._slots[cid]
                        self._specs = [s for s in self._specs if s.id != cid]
                        continue
                    await self._restart_slot(slot)
            except Exception as exc:
                log.warning("child_start_failed", supervisor=self.name, child=child_id, reason=_describe(exc))
                reason = exc
                continue
            return

    async def _restart_slot(self, slot: _Slot) -> None:
        previous = slot.instance
        instance = slot.spec.start()
        if previous is not None:
            instance.adopt(previous)
        slot.restarts += 1
        if slot.spec.on_restart is not None:
            slot.spec.on_restart(instance, slot.restarts)
        log.info("child_restarted", supervisor=self.name, child=slot.spec.id, restarts=slot.restarts)
        self._emit(SupervisorChildRestarted(self.name, slot.spec.id, slot.restarts, trio.current_time()))
        try:
            await self._start_instance(slot, instance)
        except Exception:
            slot.status = "crashed"
            raise

    async def _stop_slot(self, slot: _Slot) -> None:
        instance = slot.instance
        if instance is None or slot.done.is_set():
            slot.status = "stopped"
            return
        slot.expected_exit = True
        slot.status = "stopping"
        instance.stop()
        with trio.move_on_after(slot.spec.shutdown) as grace:
            grace.shield = True
            await slot.done.wait()
        if not slot.done.is_set():
            log.warning("child_killed", supervisor=self.name, child=slot.spec.id, grace=slot.spec.shutdown)
            if slot.scope is not None:
                slot.scope.cancel(reason=f"{slot.spec.id} did not stop within {slot.spec.shutdown:g}s")
            with trio.CancelScope(shield=True):
                await slot.done.wait()
        slot.status = "stopped"

    async def _stop_all(self) -> None:
        for slot in reversed(list(self._slots.values())):
            await self._stop_slot(slot)
