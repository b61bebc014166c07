"""The proxy server actor's protocol: what `ProxyServer` answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from apikeyrouter.actors.base import Reply

if TYPE_CHECKING:
    from apikeyrouter.proxy.server import Listening

__all__ = ["GetListening", "ProxyCommand"]


@attrs.frozen
class GetListening:
    """Where the proxy accepts connections (the bound port, also when asked for port 0)."""

    reply_to: Reply[Listening]


ProxyCommand = GetListening
