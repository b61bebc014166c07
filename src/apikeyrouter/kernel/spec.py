"""Supervision policy as data (OTP semantics), and the restart-intensity rule as a pure function."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs

from apikeyrouter.kernel.actor import Actor, ActorRef, TreeNode

__all__ = [
    "Address",
    "Child",
    "ChildSpec",
    "Restart",
    "Strategy",
    "SupervisorSpec",
    "TreeNode",
    "add_restart",
]


class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted, even after a normal exit
    TRANSIENT = "transient"  # restarted only after a crash
    TEMPORARY = "temporary"  # never restarted


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"  # restart only the child that exited
    ONE_FOR_ALL = "one_for_all"  # stop every other child, restart all
    REST_FOR_ONE = "rest_for_one"  # stop the children started after it, restart it and them


Child: TypeAlias = Actor[Any]
"""Anything a supervisor can run: an `Actor`, a `Supervisor` among them."""


@attrs.frozen
class ChildSpec:
    """How to run one child.

    `start` builds a fresh instance (called again for every instance at the child's address: restarts by
    its supervisor and restarts of an ancestor's subtree alike). `on_restart`, if given, is called with
    each instance after the first and its restart count, before it starts: the place to restore state.
    `shutdown` is the grace in seconds a stopping child gets before it is cancelled; for a supervisor it
    bounds the stop of its whole subtree.
    """

    id: str
    start: Callable[[], Child]
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    on_restart: Callable[[Child, int], None] | None = None


@attrs.frozen
class SupervisorSpec:
    """More than `intensity` restarts within `period` seconds: the supervisor gives up and escalates."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    period: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))


def add_restart(
    stamps: tuple[float, ...], now: float, *, intensity: int, period: float
) -> tuple[tuple[float, ...], bool]:
    """Record a restart at `now`; return the kept stamps and whether the intensity is exceeded.

    Stamps older than `period` are forgotten (OTP's `add_restart`): only restarts inside the sliding
    window `(now - period, now]` count, and more than `intensity` of them means give up.
    """
    kept = (*(t for t in stamps if now - t < period), now)
    return kept, len(kept) > intensity


class Address:
    """A child's place in a supervision tree: what outlives every instance that runs there.

    A supervisor keeps the addresses of its children in a table that is itself held by the supervisor's
    own address, and so on up to the root: the table survives a restart of the supervisor or of any of
    its ancestors, and so do the addresses in it, children added at run time included. Removing a child
    (or a temporary child exiting) drops its address; adding the id again makes a new one (a new ref).

    - `spec`: how to start an instance here (`None` only for a root supervisor's own table);
    - `ref`: the `ActorRef` every instance here binds; set by the first instance;
    - `incarnations`: instances started here so far, i.e. the next instance's `incarnation`;
    - `last_crash`: the last crash of an instance here;
    - `children`: for a supervisor, its children's addresses in start order (`None` until it first runs).
    """

    __slots__ = ("children", "incarnations", "last_crash", "name", "ref", "spec")

    def __init__(self, name: str, spec: ChildSpec | None = None) -> None:
        self.name = name
        self.spec = spec
        self.ref: ActorRef[Any] | None = None
        self.incarnations = 0
        self.last_crash: str | None = None
        self.children: dict[str, Address] | None = None

    def __repr__(self) -> str:
        return f"Address({self.name!r}, incarnations={self.incarnations})"
