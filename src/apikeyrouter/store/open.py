"""The backend a `[store]` table names."""

from __future__ import annotations

from pathlib import Path

from apikeyrouter.config import StoreConfig
from apikeyrouter.store.backend import StateStore
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.redis_shared import default_instance_id
from apikeyrouter.store.redis_store import RedisStore
from apikeyrouter.store.sqlite import SqliteStore

__all__ = ["DEFAULT_SQLITE_PATH", "store_from_config"]

DEFAULT_SQLITE_PATH = Path("apikeyrouter.db")


def store_from_config(cfg: StoreConfig, *, default_kind: str = "memory") -> StateStore:
    """`kind` unset: sqlite when a `path` is given, else `default_kind` (the library's memory; `serve`
    passes "sqlite")."""
    kind = cfg.kind or ("sqlite" if cfg.path is not None else default_kind)
    if kind == "sqlite":
        return SqliteStore(cfg.path or DEFAULT_SQLITE_PATH, retention=cfg.retention)
    if kind == "redis" and cfg.url is not None:
        return RedisStore(cfg.url, cfg.instance_id or default_instance_id(), retention=cfg.retention)
    return MemoryStore(retention=cfg.retention)
