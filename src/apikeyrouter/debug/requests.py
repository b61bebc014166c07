"""Parsing and validating one request line of the debug protocol. Pure: no I/O, no trio."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from apikeyrouter.debug.protocol import ErrorCode

__all__ = ["MAX_LIMIT", "BadArgument", "BadRequest", "Request", "int_arg", "parse_request", "str_arg", "strs_arg"]

MAX_LIMIT = 10_000


@attrs.frozen
class Request:
    op: str
    args: Mapping[str, Any]  # the whole request object; unknown fields are ignored (forward compatible)


class BadRequest(Exception):
    def __init__(self, code: ErrorCode, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.op = op


class BadArgument(Exception):
    pass


def parse_request(line: bytes) -> Request:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(ErrorCode.BAD_ENCODING, f"request is not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(ErrorCode.BAD_JSON, f"request is not JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise BadRequest(ErrorCode.BAD_JSON, f"request is not usable JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(ErrorCode.BAD_JSON, "request is nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest(ErrorCode.BAD_REQUEST, f'a request is a JSON object like {{"op": "tree"}}, not {_kind(obj)}')
    op = obj.get("op")
    if not isinstance(op, str):
        raise BadRequest(ErrorCode.BAD_REQUEST, f'a request needs "op" as a string, got {_kind(op)}')
    return Request(op=op, args=obj)


def _kind(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def str_arg(req: Request, name: str) -> str:
    value = req.args.get(name)
    if not isinstance(value, str) or not value:
        raise BadArgument(f'"{name}" must be a non-empty string, got {_kind(value)}')
    return value


def int_arg(req: Request, name: str, *, default: int) -> int:
    value = req.args.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadArgument(f'"{name}" must be an integer, got {_kind(value)}')
    if not 1 <= value <= MAX_LIMIT:
        raise BadArgument(f'"{name}" must be between 1 and {MAX_LIMIT}, got {value}')
    return value


def strs_arg(req: Request, name: str) -> list[str]:
    """A list of strings; a single string is accepted as a list of one; absent or null is empty."""
    value = req.args.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadArgument(f'"{name}" must be a list of non-empty strings, got {_kind(value)}')
    return list(value)
