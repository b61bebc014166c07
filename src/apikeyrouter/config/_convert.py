"""The private cattrs converter of `apikeyrouter.config`.

cattrs' stock hooks are lenient on purpose (`int("80")`, `float(True)`, a string iterated into a tuple of
characters); a config file deserves the opposite. Every scalar hook here accepts exactly the TOML types that
mean the target type, and every error is an `Invalid` whose message is safe to show: hooks never echo a
value that could be key material (only enum-like choices are quoted back, and only when they are short).
"""

from __future__ import annotations

import difflib
import enum
import keyword
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.v import format_exception as _cattrs_format_exception

from apikeyrouter.secret import Secret, secret_problem

__all__ = ["Invalid", "converter", "describe_errors", "did_you_mean", "quote_choice", "unstructure"]


class Invalid(ValueError):
    """A value of the wrong type or outside its choices. The message is final and secret-free."""


def quote_choice(value: object) -> str:
    """Quote a user value back only when it is a short string (a choice, a name), never anything long."""
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return "given"


def _strict_int(value: object, _: type) -> int:
    if type(value) is not int:  # rejects bool (a subclass of int) and "80"
        raise Invalid("invalid value for type, expected int")
    return value


def _strict_float(value: object, _: type) -> float:
    if type(value) not in (int, float):
        raise Invalid("invalid value for type, expected float")
    result = float(value)  # type: ignore[arg-type]
    if not math.isfinite(result):
        raise Invalid("invalid value for type, expected a finite float")
    return result


def _strict_str(value: object, _: type) -> str:
    if type(value) is not str:
        raise Invalid("invalid value for type, expected str")
    return value


def _strict_bool(value: object, _: type) -> bool:
    if type(value) is not bool:
        raise Invalid("invalid value for type, expected bool")
    return value


_DECIMAL_EXPECTED = 'invalid value for type, expected decimal (a string like "0.15" or an integer; floats are inexact)'


def _strict_decimal(value: object, _: type) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif type(value) is int:
        result = Decimal(value)
    elif type(value) is str:
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise Invalid(_DECIMAL_EXPECTED) from None
    else:
        raise Invalid(_DECIMAL_EXPECTED)
    if not result.is_finite():
        raise Invalid("invalid value for type, expected a finite decimal")
    return result


def _structure_secret(value: object, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if type(value) is not str:
        raise Invalid("invalid value for type, expected str")
    if not value.strip():
        raise Invalid("invalid value, expected a non-empty string")
    if (problem := secret_problem(value.strip())) is not None:
        raise Invalid(f"invalid secret: it {problem}")
    return Secret(value.strip())


def _structure_path(value: object, _: type) -> Path:
    if isinstance(value, Path):
        return value
    if type(value) is not str or not value:
        raise Invalid("invalid value for type, expected a path string")
    return Path(value)


def _is_literal(t: Any) -> bool:
    return get_origin(t) is Literal


def _literal_factory(t: Any) -> Callable[[object, Any], object]:
    choices = get_args(t)
    listing = ", ".join(str(c) for c in choices)

    def structure(value: object, _: Any) -> object:
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return choice
        if isinstance(value, str):
            raise Invalid(f"invalid value {quote_choice(value)}, expected one of: {listing}")
        raise Invalid(f"invalid value for type, expected one of: {listing}")

    return structure


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _enum_factory(t: type[enum.Enum]) -> Callable[[object, Any], enum.Enum]:
    listing = ", ".join(str(member.value) for member in t)

    def structure(value: object, _: Any) -> enum.Enum:
        if isinstance(value, t):
            return value
        for member in t:
            if type(value) is type(member.value) and value == member.value:
                return member
        if isinstance(value, str):
            raise Invalid(f"invalid value {quote_choice(value)}, expected one of: {listing}")
        raise Invalid(f"invalid value for type, expected one of: {listing}")

    return structure


def _is_homogeneous_tuple(t: Any) -> bool:
    args = get_args(t)
    return get_origin(t) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_factory(t: Any, conv: cattrs.Converter) -> Callable[[object, Any], tuple[Any, ...]]:
    # cattrs would iterate a string into a tuple of characters (`models = "gpt-4o"`); require a list.
    elem_type = get_args(t)[0]
    handler = conv.get_structure_hook(elem_type)

    def structure(value: object, _: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise Invalid("invalid value for type, expected list")
        result: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                result.append(handler(item, elem_type))
            except Exception as exc:
                note = IterableValidationNote(f"Structuring {t} @ index {index}", index, elem_type)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {t!r}", errors, t)
        return tuple(result)

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(Decimal, _strict_decimal)
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook_factory(_is_literal, _literal_factory)
    conv.register_structure_hook_factory(_is_enum, _enum_factory)
    conv.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_factory)

    # Unstructuring is for showing a config (debug channel, fingerprints): never key material.
    conv.register_unstructure_hook(Secret, lambda s: s.fingerprint)
    conv.register_unstructure_hook(Decimal, str)
    conv.register_unstructure_hook(Path, str)
    conv.register_unstructure_hook(
        types.MappingProxyType, lambda m: {conv.unstructure(k): conv.unstructure(v) for k, v in m.items()}
    )
    return conv


converter = _make_converter()


def unstructure(obj: object) -> Any:
    return converter.unstructure(obj)


def did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str | None:
    """A "did you mean 'rpm'?" for the unknown names that are close to a known one (a typo), else None."""
    choices = list(known)
    close = {name: found[0] for name in unknown if (found := difflib.get_close_matches(name, choices, n=1))}
    if not close:
        return None
    if len(close) == 1:
        return f"did you mean {next(iter(close.values()))!r}?"
    return "did you mean " + ", ".join(f"{right!r} for {wrong}" for wrong, right in close.items()) + "?"


def _field_names(cl: type) -> list[str]:
    """A record's fields as a config file spells them (`global_` is `global`)."""
    if not attrs.has(cl):
        return []
    names = [f.name for f in attrs.fields(cl)]
    return [n[:-1] if n.endswith("_") and keyword.iskeyword(n[:-1]) else n for n in names]


# A hint rides at the end of its message, after the path cattrs appends: `... @ config.keys[0]; did you mean`.
_HINT = " \x00hint: "


def _format(exc: BaseException, t: type | None) -> str:
    if isinstance(exc, Invalid):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        message = f"extra fields found ({', '.join(extra)})"
        hint = did_you_mean(extra, _field_names(exc.cl))
        return message + (_HINT + hint if hint else "")
    if isinstance(exc, AttributeError | TypeError) and t is not None and _is_mapping_type(t):
        return "invalid value for type, expected a table"
    return _cattrs_format_exception(exc, t)


def _is_mapping_type(t: type) -> bool:
    origin = get_origin(t) or t
    return isinstance(origin, type) and issubclass(origin, Mapping)


_GLOBAL_ATTR = re.compile(r"\.global_(?=[.\[ ]|$)")


def _hint_last(message: str) -> str:
    if _HINT not in message:
        return message
    head, rest = message.split(_HINT, 1)
    hint, _, where = rest.rpartition(" @ ")
    return f"{head} @ {where}; {hint}"


def describe_errors(exc: BaseException, path: str) -> list[str]:
    """`exc` from `converter.structure` as messages like `extra fields found (rmp) @ config.keys[2]`."""
    if isinstance(exc, ClassValidationError | IterableValidationError | Invalid):
        messages = cattrs.transform_error(exc, path=path, format_exception=_format)
        # cattrs names a renamed field by its attribute; the one rename is `budgets.global` (`global_`).
        return [_GLOBAL_ATTR.sub(".global", _hint_last(m)) for m in messages]
    # Anything else is a bug in a hook; still report it as a config error rather than a traceback.
    return [f"invalid value ({type(exc).__name__}) @ {path}"]
