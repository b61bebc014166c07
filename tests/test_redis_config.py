"""`[store] kind = "redis"`: its fields, and a mistake in them named with its path (no Redis needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apikeyrouter.config import parse_config
from apikeyrouter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


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


def test_a_redis_url_with_a_bad_port_names_the_field() -> None:
    errors = _errors({"kind": "redis", "url": "redis://:hunter2@127.0.0.1:notaport/0"})
    assert "the port is not a number from 0 to 65535 @ config.store.url" in errors
    assert "hunter2" not in " ".join(errors)  # the URL's password is never shown


def test_serve_without_redis_py_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[debug]\nenabled = false\n[store]\nkind = "redis"\nurl = "redis://127.0.0.1:1/0"\n')
    hide = "import sys; sys.modules['redis'] = None; from apikeyrouter.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", hide, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the redis store needs redis-py: pip install 'apikeyrouter[redis]' @ config.store.kind"
    )
    assert "Traceback" not in done.stderr


def test_redis_py_is_imported_only_when_a_redis_store_is_opened() -> None:
    # ~90 modules and ~7 MiB of RSS (issue 10's idle goal) that a process with another store never uses.
    probe = (
        "import sys\nfrom apikeyrouter.cli import main\nfrom apikeyrouter.store import redis_link\n"
        "print('redis' in sys.modules)\nredis_link.redis_client('redis://127.0.0.1:1/0', 1.0)\n"
        "print('redis' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["False", "True"]
