"""How a request is put on the wire: its JSON body (both paths) and, for the direct path, the bytes of its
HTTP/1.1 head, written directly for `H11Transport.request` (no h11 event
validation per request): names and values are checked as h11 checks them, once per name and with one
regex search per value; framing (`content-length`) and `host` are ours.

A value's offending character is never quoted in an error: header values carry key material.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import h11
import httpx
import orjson

__all__ = ["USER_AGENT", "build_request", "encode_fields", "encode_head", "encode_json", "encode_lines", "request_line"]

USER_AGENT = "apikeyrouter"

# RFC 9110 token characters for names; values: no control character except HTAB (what h11 refuses).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the transport writes itself, whatever the caller passes.
_OURS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# name as given -> its lowercase form, for every name already checked (a handful per process).
_NAMES: dict[str, str] = {}
_MAX_NAMES = 4096


def _checked_name(name: str) -> str:
    lower = _NAMES.get(name)
    if lower is not None:
        return lower
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise httpx.LocalProtocolError(f"Illegal header name {name!r}")
    if len(_NAMES) >= _MAX_NAMES:
        _NAMES.clear()
    lower = _NAMES[name] = name.lower()
    return lower


def request_line(method: str, target: bytes, netloc: bytes) -> bytes:
    """`METHOD target HTTP/1.1` and the host line, validated by h11 (once per method and URL)."""
    try:
        event = h11.Request(method=method, target=target, headers=[(b"host", netloc), (b"content-length", b"0")])
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    return b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (event.method, event.target, netloc)


def encode_head(headers: Mapping[str, str], body: bytes | None, content_type: str) -> bytes:
    """The header lines after the host line, through the blank line. `content_type` is sent when a body
    is and the caller gave none. Non-ASCII text raises `UnicodeEncodeError`, as httpx does."""
    if body is None:
        return encode_fields(headers, False, content_type) + b"\r\n"
    return encode_fields(headers, True, content_type) + b"content-length: %d\r\n\r\n" % len(body)


def encode_fields(headers: Mapping[str, str], has_body: bool, content_type: str) -> bytes:
    """The header lines after the host line, without the framing (`content-length`) and the blank line:
    the part of a head that depends on the headers only, so a caller may keep it for the next request
    with the same headers."""
    parts: list[str] = []
    typed = agent = coded = False
    for name, value in headers.items():
        lower = _checked_name(name)
        if lower in _OURS:
            continue
        if not isinstance(value, str) or _BAD_VALUE.search(value) is not None:
            raise httpx.LocalProtocolError(f"Illegal header value for {name!r}")
        if lower == "content-type":
            typed = True
        elif lower == "user-agent":
            agent = True
        elif lower == "accept-encoding":
            coded = True
        parts.append(f"{name}: {value}\r\n")
    if not agent:
        parts.append(f"user-agent: {USER_AGENT}\r\n")
    if not coded:  # without the header any coding is acceptable (RFC 9110); this path decodes none
        parts.append("accept-encoding: identity\r\n")
    if has_body and not typed:
        parts.append(f"content-type: {content_type}\r\n")
    return "".join(parts).encode("ascii")


def encode_lines(items: Iterable[tuple[str, str]]) -> bytes:
    """Header lines exactly as given (checked as `encode_fields` checks them), with no defaults added: the
    lines a caller will not have kept (those carrying a key)."""
    parts: list[str] = []
    for name, value in items:
        if _checked_name(name) in _OURS:
            continue
        if not isinstance(value, str) or _BAD_VALUE.search(value) is not None:
            raise httpx.LocalProtocolError(f"Illegal header value for {name!r}")
        parts.append(f"{name}: {value}\r\n")
    return "".join(parts).encode("ascii")


def encode_json(value: Any) -> bytes:
    """A request body as both paths send it: orjson's compact UTF-8 (NaN and infinities as null); what
    orjson cannot encode (integers beyond 64 bits, non-string keys) as the stdlib encodes it, as httpx did."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def build_request(
    client: httpx.AsyncClient, method: str, url: str, headers: Mapping[str, str], content: bytes | None
) -> httpx.Request:
    """The httpx path's request: the same headers and body bytes as the direct path (JSON typed as such)."""
    if content is None:
        return client.build_request(method, url, headers=headers)
    if not any(name.lower() == "content-type" for name in headers):
        headers = {**headers, "content-type": "application/json"}
    return client.build_request(method, url, headers=headers, content=content)
