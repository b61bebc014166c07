"""ProviderActor protocol. Upstream calls are not messages: they run as tasks in the provider's own
nursery, started by `ProviderActor.complete` / `ProviderActor.stream` (see actors/provider.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from apikeyrouter.actors.base import Reply

if TYPE_CHECKING:
    from apikeyrouter.actors.provider import ProviderSnapshot

__all__ = ["GetProviderSnapshot", "ProviderCommand"]


@attrs.frozen
class GetProviderSnapshot:
    reply_to: Reply[ProviderSnapshot]


ProviderCommand = GetProviderSnapshot
