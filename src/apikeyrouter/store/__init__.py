"""Persistence of actor state: the async `StateStore` interface, its backends (memory, SQLite) and the
store writer actor that alone talks to them."""

from apikeyrouter.store.backend import Batch, StateStore
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.sqlite import SqliteStore
from apikeyrouter.store.writer import StoreState, StoreWriter

__all__ = ["Batch", "MemoryStore", "SqliteStore", "StateStore", "StoreState", "StoreWriter"]
