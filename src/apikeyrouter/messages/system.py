"""A supervisor's mailbox protocol (`Supervisor` is an `Actor[SupervisorCommand]`).

`AddChild` and `RemoveChild` are asks through the supervisor's `ActorRef` (`Supervisor.add_child` /
`remove_child`); `ChildExited` is what a child's task puts in the mailbox when the child ends on its
own (a crash, or a normal exit nobody asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from apikeyrouter.kernel.actor import Reply

if TYPE_CHECKING:
    from apikeyrouter.kernel.spec import Child, ChildSpec

__all__ = ["AddChild", "ChildExited", "RemoveChild", "SupervisorCommand"]


@attrs.frozen
class AddChild:
    spec: ChildSpec
    reply_to: Reply[Child]


@attrs.frozen
class RemoveChild:
    child_id: str
    reply_to: Reply[bool]


@attrs.frozen
class ChildExited:
    child_id: str
    instance: Child
    reason: Exception | None  # None: a normal exit


SupervisorCommand = AddChild | RemoveChild | ChildExited
