"""The debug server's status value. Its mailbox takes no messages (connections are served by its own
tasks); the status is its `state_summary`, read from the tree."""

from __future__ import annotations

import attrs

__all__ = ["DebugServerStatus"]


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
