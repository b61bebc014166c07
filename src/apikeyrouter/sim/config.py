"""`sim.toml`: the simulated provider's defaults and per-key behaviour, loaded strictly.

```toml
models = ["gpt-4o-mini", "claude-sonnet-4-5"]   # optional: what GET /v1/models lists
[defaults]
rpm = 600              # requests per window per key
tpm = 1000000          # tokens (input + output) per window per key
window_s = 60.0        # the sliding window; tests shorten it
latency_ms = 0         # before the first byte
chunk_delay_ms = 0     # between streamed chunks
error_rate = 0.0       # 500/503 (OpenAI) or 500/529 (Anthropic)
timeout_rate = 0.0     # accept the request, never answer (until the client gives up)
reset_rate = 0.0       # drop the connection without an answer
cut_stream_after = 0   # end streams abruptly after N content chunks (0 = never)
seed = 0               # per-key randomness is reproducible
[[keys]]
key = "sk-sim-invalid"
behavior = "invalid"   # "ok" | "invalid" (401) | "exhausted" (billing quota gone)
```

Unknown fields are errors naming the field and where it is (`keys[2].rmp`), because a typo in a
fault-injection file silently turning a test into a no-op is worse than a crash.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from apikeyrouter.errors import ConfigError

__all__ = ["BEHAVIORS", "DEFAULT_MODELS", "KeyBehavior", "SimConfig", "load_sim_config", "parse_sim_config"]

BEHAVIORS = ("ok", "invalid", "exhausted")

DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o4-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1",
)


@attrs.frozen
class KeyBehavior:
    rpm: int = 600
    tpm: int = 1_000_000
    window_s: float = 60.0
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    behavior: str = "ok"
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    reset_rate: float = 0.0
    cut_stream_after: int = 0
    seed: int = 0


@attrs.frozen
class SimConfig:
    defaults: KeyBehavior = KeyBehavior()
    keys: Mapping[str, KeyBehavior] = attrs.field(factory=dict)
    models: tuple[str, ...] = DEFAULT_MODELS

    def behavior_for(self, key: str) -> KeyBehavior:
        return self.keys.get(key, self.defaults)


_INT_FIELDS = {"rpm", "tpm", "cut_stream_after", "seed"}
_FLOAT_FIELDS = {"window_s", "latency_ms", "chunk_delay_ms", "error_rate", "timeout_rate", "reset_rate"}
_RATE_FIELDS = {"error_rate", "timeout_rate", "reset_rate"}
_FIELDS = _INT_FIELDS | _FLOAT_FIELDS | {"behavior"}


def _fields(raw: Any, path: str, base: KeyBehavior, *, allow_key: bool) -> tuple[KeyBehavior, str | None]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a table @ {path}", path=path)
    allowed = _FIELDS | ({"key"} if allow_key else set())
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"extra fields found ({', '.join(extra)}) @ {path}", path=f"{path}.{extra[0]}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{path}.{name}"
        if name == "key":
            continue
        if name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"expected a non-negative integer, got {value!r} @ {where}", path=where)
        elif name in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"expected a non-negative number, got {value!r} @ {where}", path=where)
            value = float(value)
            if name in _RATE_FIELDS and value > 1:
                raise ConfigError(f"a rate must be between 0 and 1, got {value!r} @ {where}", path=where)
            if name == "window_s" and value <= 0:
                raise ConfigError(f"window_s must be positive @ {where}", path=where)
        elif name == "behavior" and value not in BEHAVIORS:
            raise ConfigError(f"expected one of {', '.join(BEHAVIORS)}, got {value!r} @ {where}", path=where)
        values[name] = value
    merged = attrs.evolve(base, **values)
    if merged.error_rate + merged.timeout_rate + merged.reset_rate > 1:
        # The three are exclusive slices of one random draw per request.
        raise ConfigError(f"error_rate + timeout_rate + reset_rate must add up to at most 1 @ {path}", path=path)
    key: str | None = None
    if allow_key:
        key = raw.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"each [[keys]] entry needs a non-empty string `key` @ {path}.key", path=f"{path}.key")
    return merged, key


def parse_sim_config(raw: Mapping[str, Any], *, path: str = "sim") -> SimConfig:
    extra = sorted(set(raw) - {"defaults", "keys", "models"})
    if extra:
        raise ConfigError(f"extra fields found ({', '.join(extra)}) @ {path}", path=f"{path}.{extra[0]}")
    defaults, _ = _fields(raw.get("defaults", {}), f"{path}.defaults", KeyBehavior(), allow_key=False)
    raw_keys = raw.get("keys", [])
    if not isinstance(raw_keys, list):
        raise ConfigError(f"expected an array of tables ([[keys]]) @ {path}.keys", path=f"{path}.keys")
    keys: dict[str, KeyBehavior] = {}
    for i, entry in enumerate(raw_keys):
        behavior, key = _fields(entry, f"{path}.keys[{i}]", defaults, allow_key=True)
        assert key is not None
        if key in keys:
            raise ConfigError(f"duplicate key entry @ {path}.keys[{i}].key", path=f"{path}.keys[{i}].key")
        keys[key] = behavior
    models = raw.get("models", list(DEFAULT_MODELS))
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"expected an array of model ids @ {path}.models", path=f"{path}.models")
    return SimConfig(defaults=defaults, keys=keys, models=tuple(models))


def load_sim_config(source: str | Path) -> SimConfig:
    """Load a sim.toml file (a `Path` or a path string)."""
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: not UTF-8 text", path=str(path)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path=str(path)) from exc
    return parse_sim_config(raw, path=path.name)
