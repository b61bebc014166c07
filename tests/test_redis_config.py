"""`[store] kind = "redis"`: its fields, and a mistake in them named with its path (no Redis needed)."""

from __future__ import annotations

import pytest

from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError


def _errors(store: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": store}, {}, "<test>")
    return tuple(caught.value.errors)


def test_a_redis_store_takes_its_url_and_instance_id() -> None:
    config = parse_config({"store": {"kind": "redis", "url": "redis://127.0.0.1:6379/0", "instance_id": "eu-1"}}, {})
    store = config.store
    assert (store.kind, store.url, store.instance_id) == ("redis", "redis://127.0.0.1:6379/0", "eu-1")
    assert (config.store.redis_deadline, config.store.instance_ttl) == (0.25, 5.0)


@pytest.mark.parametrize(
    ("store", "error"),
    [
        ({"kind": "redis"}, "the redis store needs a url"),
        ({"kind": "redis", "url": "http://x"}, "must start with redis://, rediss:// or unix:// @ config.store.url"),
        ({"kind": "redis", "url": "redis://h", "instance_id": "a b"}, "@ config.store.instance_id"),
        ({"kind": "redis", "url": "redis://h", "path": "x.db"}, "uses url, not path @ config.store.path"),
        ({"kind": "redis", "url": "redis://h", "redis_deadline": 0}, "@ config.store.redis_deadline"),
        ({"kind": "redis", "url": "redis://h", "instance_ttl": 0.1}, "@ config.store.instance_ttl"),
        ({"kind": "memory", "url": "redis://h"}, "only the redis store uses url @ config.store.url"),
    ],
)
def test_a_bad_redis_store_names_the_field(store: dict[str, object], error: str) -> None:
    assert any(error in e for e in _errors(store)), _errors(store)
