"""Views and comparisons of a loaded config: a secret-free dict, a fingerprint, diffs for SIGHUP reload."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from apikeyrouter.config._convert import unstructure
from apikeyrouter.config._schema import RouterConfig

__all__ = ["ConfigDiff", "config_fingerprint", "config_to_dict", "diff_keys", "diff_providers"]


def config_to_dict(config: RouterConfig) -> dict[str, Any]:
    """A JSON-ready view of the config with every secret replaced by its fingerprint.

    Secret fields are renamed (`secret` -> `secret_fingerprint`, ...) so this view can never be fed back as
    a config that would accept a fingerprint as a token.
    """
    out: dict[str, Any] = dict(unstructure(config))
    out.pop("source")
    out.pop("warnings")
    server = out["server"]
    server["client_token_fingerprints"] = server.pop("client_tokens")
    server["admin_token_fingerprint"] = server.pop("admin_token")
    for key in out["keys"]:
        key["secret_fingerprint"] = key.pop("secret")
    for client in out.get("clients", ()):
        client["token_fingerprint"] = client.pop("token")
    out["failures"] = {cls.value: unstructure(action) for cls, action in config.failures.items()}
    cleaned: dict[str, Any] = _drop_none(out)
    return cleaned


def _drop_none(value: Any) -> Any:
    # TOML has no null: leave unset optional fields out so the view reads like a config file.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def config_fingerprint(config: RouterConfig) -> str:
    """A short hash of everything that affects behaviour (secrets by fingerprint): equal configs, equal hash."""
    canonical = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return "cfg:" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


class ConfigDiff(NamedTuple):
    """What a reload changes: new entries, entries gone, and the new version of each changed entry."""

    added: tuple[Any, ...]
    removed: tuple[Any, ...]
    changed: tuple[Any, ...]


def _diff(old: Iterable[Any], new: Iterable[Any]) -> ConfigDiff:
    before = {item.id: item for item in old}
    after = {item.id: item for item in new}
    return ConfigDiff(
        added=tuple(item for item_id, item in after.items() if item_id not in before),
        removed=tuple(item for item_id, item in before.items() if item_id not in after),
        changed=tuple(item for item_id, item in after.items() if item_id in before and before[item_id] != item),
    )


def diff_keys(old: RouterConfig, new: RouterConfig) -> ConfigDiff:
    """Keys added, removed and changed (any field, a rotated secret included) between two configs, by id."""
    return _diff(old.keys, new.keys)


def diff_providers(old: RouterConfig, new: RouterConfig) -> ConfigDiff:
    return _diff(old.providers, new.providers)
