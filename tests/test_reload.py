"""A config reload is all or nothing: a new config whose adapters cannot be built changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError
from apikeyrouter.runtime import ApiKeyRouter

OLD: dict[str, Any] = {
    "providers": [
        {"id": "a", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
        {"id": "b", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
    ],
    "keys": [
        {"id": "ka", "provider": "a", "secret": "sk-test-ka"},
        {"id": "kb", "provider": "b", "secret": "sk-test-kb"},
    ],
}
# Provider "b" and its key go, "a" stays, and a generic provider arrives whose quota header mapping the
# adapter cannot use (two fields read from one header): parse_config accepts it, building it fails.
NEW: dict[str, Any] = {
    "providers": [
        OLD["providers"][0],
        {
            "id": "g",
            "kind": "generic",
            "base_url": "http://127.0.0.1:9",
            "generic": {"quota_headers": {"remaining_requests": "x-left", "limit_requests": "x-left"}},
        },
    ],
    "keys": [OLD["keys"][0], {"id": "kg", "provider": "g", "secret": "sk-test-kg"}],
}


async def test_a_reload_whose_adapters_cannot_be_built_is_refused_whole_and_changes_nothing() -> None:
    # It used to remove "kb" and provider "b" first and fail while adding "g": half a reload, and
    # the router no longer matched either config.
    async with ApiKeyRouter(parse_config(OLD, env={})) as router:
        before = router.config
        with pytest.raises(ConfigError) as info:
            await router.apply_config(parse_config(NEW, env={}))
        assert sorted(k["id"] for k in router.keys()) == ["ka", "kb"]
        assert sorted(p["id"] for p in router.get_state_summary()["providers"]) == ["a", "b"]
        assert router.config is before
        assert info.value.path.startswith("config.providers[1].generic.quota_headers.")  # names the field
