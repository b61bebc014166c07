"""Opaque handle for key material.

A `Secret` never shows its value through `repr`, `str`, `format`, pickling or equality
diagnostics. Code that must send the value upstream calls `reveal()` at the last moment
(inside an adapter, building the auth header) and never stores the result.

Key material goes into HTTP headers, so it must be something a header can carry: 1 to
`MAX_SECRET_LENGTH` printable ASCII characters, no whitespace or control characters (a key pasted
with a zero-width space or a trailing NBSP would otherwise fail every request it is chosen for).
`secret_problem` is the one check; `Secret()` applies it, and the config loader and the management
API call it to name the offending field. Its messages never contain the value.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NoReturn

__all__ = ["MAX_SECRET_LENGTH", "Secret", "secret_problem"]

MAX_SECRET_LENGTH = 4096


def secret_problem(value: object) -> str | None:
    """Why `value` cannot be key material, or None when it can. Never includes the value itself."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_SECRET_LENGTH:
        return f"is {len(value)} characters long, more than the {MAX_SECRET_LENGTH} allowed"
    for index, char in enumerate(value):
        if "!" <= char <= "~":
            continue
        if char in "\u200b\u200c\u200d\u2060\ufeff":
            what = "an invisible character"
        elif char.isspace():
            what = "whitespace"
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            what = "a control character"
        else:
            what = "a non-ASCII character"
        return (
            f"contains {what} (U+{ord(char):04X}) at position {index}: key material must be printable ASCII "
            "without spaces (check for a stray character pasted with the key)"
        )
    return None


class Secret:
    """Key material behind a redacting repr. `fingerprint` is safe to log."""

    __slots__ = ("__value", "fingerprint")

    def __init__(self, value: str) -> None:
        if (problem := secret_problem(value)) is not None:
            raise ValueError(f"a secret {problem}")
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
