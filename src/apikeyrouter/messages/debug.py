"""The debug server's protocol: what its mailbox receives (connections are served by its own tasks)."""

from __future__ import annotations

import attrs

from apikeyrouter.actors.base import Reply

__all__ = ["DebugCommand", "DebugServerStatus", "GetDebugStatus"]


@attrs.frozen
class DebugServerStatus:
    """A snapshot of the debug server: also its `state_summary`, so `inspect` shows it in the tree."""

    path: str
    clients: int
    max_clients: int
    subscribers: int
    connections_total: int
    requests_total: int
    refused_busy: int
    dropped_slow: int


@attrs.frozen
class GetDebugStatus:
    reply_to: Reply[DebugServerStatus]


DebugCommand = GetDebugStatus
