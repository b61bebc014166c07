"""OTP-style supervision: `Supervisor`, `ChildSpec`, `SupervisorSpec`, `Restart`, `Strategy`."""

from apikeyrouter.supervisors.spec import Child, ChildSpec, Restart, Strategy, SupervisorSpec, TreeNode, add_restart
from apikeyrouter.supervisors.supervisor import ChildInfo, Supervisor

__all__ = [
    "Child",
    "ChildInfo",
    "ChildSpec",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorSpec",
    "TreeNode",
    "add_restart",
]
