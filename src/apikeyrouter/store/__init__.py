"""Persistence of actor state: `StateStore` protocol and the in-memory default."""

from apikeyrouter.store.memory import MemoryStore, StateStore

__all__ = ["MemoryStore", "StateStore"]
