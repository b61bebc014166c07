"""The debug channel: a Unix-socket JSON-lines server (an actor), its client, and rich renderings.

    async with open_debug_channel(router, path) as server: ...   # embedded
    ChildSpec("debug", lambda: DebugServer(router, path))          # in a supervision tree

The protocol is described in `docs/debug.md`; `apikeyrouter inspect` is the command-line client.
"""

from apikeyrouter.debug.client import DebugClient, call, connect, request, subscribe
from apikeyrouter.debug.paths import default_socket_path, discover_sockets, probe_socket
from apikeyrouter.debug.protocol import ErrorCode
from apikeyrouter.debug.server import OPS, DebugServer, open_debug_channel
from apikeyrouter.errors import DebugChannelError, DebugChannelUnavailable, DebugRequestError, DebugSocketInUse

__all__ = [
    "OPS",
    "DebugChannelError",
    "DebugChannelUnavailable",
    "DebugClient",
    "DebugRequestError",
    "DebugServer",
    "DebugSocketInUse",
    "ErrorCode",
    "call",
    "connect",
    "default_socket_path",
    "discover_sockets",
    "open_debug_channel",
    "probe_socket",
    "request",
    "subscribe",
]
