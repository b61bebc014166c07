"""The kernel: `Actor`, `ActorRef`, `Reply` (actor.py), and supervision as data: `ChildSpec`,
`SupervisorSpec`, `Restart`, `Strategy` and the `Address` a child lives at (spec.py). Everything above
is built on these; a message may carry a `Reply`, so the kernel sits below `messages/`."""

from apikeyrouter.kernel.actor import Actor, ActorRef, ActorSnapshot, Home, Reply, TreeNode
from apikeyrouter.kernel.spec import Address, Child, ChildSpec, Restart, Strategy, SupervisorSpec, add_restart

__all__ = [
    "Actor",
    "ActorRef",
    "ActorSnapshot",
    "Address",
    "Child",
    "ChildSpec",
    "Home",
    "Reply",
    "Restart",
    "Strategy",
    "SupervisorSpec",
    "TreeNode",
    "add_restart",
]
