"""Opaque handle for key material.

A `Secret` never shows its value through `repr`, `str`, `format`, pickling or equality
diagnostics. Code that must send the value upstream calls `reveal()` at the last moment
(inside an adapter, building the auth header) and never stores the result.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """Key material behind a redacting repr. `fingerprint` is safe to log."""

    __slots__ = ("__value", "fingerprint")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self.__value = value
        # A short, one-way fingerprint so operators can tell keys apart without seeing them.
        self.fingerprint: str = "fp:" + hashlib.sha256(value.encode()).hexdigest()[:10]

    def reveal(self) -> str:
        return self.__value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison against a presented value."""
        return hmac.compare_digest(self.__value.encode(), candidate.encode())

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret cannot be pickled")
