"""Actors: `Actor` (base), `ActorRef`, `Reply`, `ActorSnapshot`."""

from apikeyrouter.actors.base import Actor, ActorRef, ActorSnapshot, Reply

__all__ = ["Actor", "ActorRef", "ActorSnapshot", "Reply"]
