"""OTP-style supervision: `Supervisor` runs children, restarts them per strategy and escalates. The policy
it reads (`ChildSpec`, `SupervisorSpec`, `Restart`, `Strategy`) is data in `apikeyrouter.kernel`."""

from apikeyrouter.supervisors.supervisor import ChildInfo, Supervisor

__all__ = ["ChildInfo", "Supervisor"]
