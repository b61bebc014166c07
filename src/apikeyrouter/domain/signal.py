"""What a provider says: the quota signal read from a response's headers, and a provider's declared
capabilities. Plain values, shared by the adapters (which build them), the key actors (which learn from
them) and the router (which scores on them)."""

from __future__ import annotations

import attrs

__all__ = ["Capabilities", "QuotaSignal"]


@attrs.frozen
class QuotaSignal:
    """What a response's headers said about the key's quota. Resets are seconds from receipt."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def empty(self) -> bool:
        return (
            self.limit_requests is None
            and self.remaining_requests is None
            and self.reset_requests_s is None
            and self.limit_tokens is None
            and self.remaining_tokens is None
            and self.reset_tokens_s is None
            and self.retry_after_s is None
        )


@attrs.frozen
class Capabilities:
    models: frozenset[str]  # empty = any model the provider accepts
    streaming: bool = True
    max_context: int | None = None

    def supports(self, model: str) -> bool:
        return not self.models or model in self.models
