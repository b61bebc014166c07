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
import re
from typing import NoReturn

__all__ = ["MAX_SECRET_LENGTH", "REDACTED", "Secret", "redact", "secret_problem"]

MAX_SECRET_LENGTH = 4096


REDACTED = "[redacted]"
# The shortest run of a key's characters that counts as a piece of it: long enough that ordinary words
# and numbers do not collide with a random key, short enough that a half-masked echo is caught.
_PIECE = 6
# Upstream text is hostile input: every pattern here runs in linear time. A run of key characters (or of
# stars, or dots) is only ever entered at its start (the look-behinds) and consumed without backtracking
# (possessive quantifiers), so 64 KiB of "eeee..." or "****..." costs one pass, not one pass per position.
_W = r"[A-Za-z0-9_\-]"
_LEFT = rf"(?:(?<!{_W}){_W}++)"  # a whole run of key characters, entered only at its start
_CREDENTIAL = re.compile(
    r"\bBearer\s+\S+"  # an Authorization value
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_\-*]{3,}+(?:(?:\.{3}|\u2026)" + _W + "++)?"  # sk-..., masked ones too
    rf"|{_LEFT}?(?<!\*)\*{{3,}}+{_W}++|{_LEFT}\*{{3,}}+"  # masked: abcd****wxyz, ****6789, sk-abc***
    r"|\bAIza[0-9A-Za-z_\-]{20,}+"  # Google API keys
    rf"|(?<!{_W}){_W}{{40,}}+",  # any long opaque token
    re.IGNORECASE,
)
_RUN = re.compile(rf"(?<!{_W}){_W}{{16,}}+")
_SEGMENT = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{16,}+")
_MASK = re.compile(rf"({_LEFT}?)(?:(?<!\*)\*++|(?<!\.)\.{{3,}}+|\u2026)({_W}*+)")


def _token_shaped(run: str) -> bool:
    # 16+ letters and digits without a separator, mixing both: a key, a hash, an opaque id; never a model
    # name or a date (`claude-3-5-sonnet-20241022` has no such segment).
    return any(any(c.isdigit() for c in seg) and any(c.isalpha() for c in seg) for seg in _SEGMENT.findall(run))


def _pieces_of(value: str, text: str) -> list[tuple[int, int]]:
    """Spans of `text` made of runs of `_PIECE` or more characters that also occur in `value`."""
    spans: list[tuple[int, int]] = []
    if len(value) < _PIECE:
        start = text.find(value)
        while start >= 0:
            spans.append((start, start + len(value)))
            start = text.find(value, start + len(value))
        return spans
    grams = {value[i : i + _PIECE] for i in range(len(value) - _PIECE + 1)}
    for i in range(len(text) - _PIECE + 1):
        if text[i : i + _PIECE] in grams:
            if spans and spans[-1][1] >= i:
                spans[-1] = (spans[-1][0], i + _PIECE)
            else:
                spans.append((i, i + _PIECE))
    return spans


def _masked_echo(value: str, match: re.Match[str]) -> bool:
    # `Qz7x...c6Bd`: a mask between a start and/or an end of the key itself.
    left, right = match.group(1), match.group(2)
    return (len(left) >= 2 and value.startswith(left)) or (len(right) >= 2 and value.endswith(right))


def redact(text: str, secret: Secret | None = None) -> str:
    """`text` (from upstream, or about to be shown) without key material: any run of 6 or more characters of
    `secret` (the whole key if shorter), the key masked around its own ends, and anything shaped like a
    credential (`sk-...`, `Bearer ...`, `abcd****wxyz`, long letter-and-digit tokens) becomes `[redacted]`."""
    if secret is not None:
        value = secret.reveal()
        spans = _pieces_of(value, text)
        spans += [m.span() for m in _MASK.finditer(text) if _masked_echo(value, m)]
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        for start, end in reversed(merged):
            text = text[:start] + REDACTED + text[end:]
    text = _CREDENTIAL.sub(REDACTED, text)
    return _RUN.sub(lambda m: REDACTED if _token_shaped(m.group()) else m.group(), text)


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
