"""An address (ref, restart count, incarnation, children added at run time) outlives every restart of the
child and of any of its ancestors, two and three levels down, with exact virtual times (autojump_clock).

The tree is shaped like the router's:

    root -> providers -> provider:x (rest_for_one) -> provider        (a Counter)
                                                  -> keys          -> key:k0, key:k1 (KeyActors, added at run time)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import trio
import trio.testing

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.key import KeyActor
from apikeyrouter.domain.keystate import KeySettings
from apikeyrouter.kernel import ActorRef
from apikeyrouter.kernel.spec import Child, ChildSpec, Strategy, SupervisorSpec
from apikeyrouter.messages.key import Granted, InjectCrash, KeyCommand, Reserve
from apikeyrouter.observe import EventBus
from apikeyrouter.secret import Secret
from apikeyrouter.store.memory import MemoryStore
from apikeyrouter.store.port import StorePort
from apikeyrouter.store.writer import run_store
from apikeyrouter.supervisors import Supervisor
from tests.kernel_actors import Counter, CounterMsg, CrashNow

STORE = StorePort()  # pointed at a writer over a MemoryStore by store_running(), for each test
BOARD = SnapshotBoard()
EVENTS = EventBus()


@asynccontextmanager
async def store_running() -> AsyncIterator[None]:
    async with run_store(MemoryStore()) as port:
        STORE.ref = port.ref  # each test gets a writer of its own at the one port the specs hold
        yield


def key_spec(key_id: str) -> ChildSpec:
    def make() -> KeyActor:
        secret = Secret(f"sk-test-{key_id}")
        return KeyActor(KeySettings(id=key_id, provider="x"), secret, store=STORE, board=BOARD, events=EVENTS)

    return ChildSpec(f"key:{key_id}", make, shutdown=1.0)


def provider_subtree() -> Supervisor:
    return Supervisor(
        "provider:x",
        SupervisorSpec(Strategy.REST_FOR_ONE, intensity=1, period=60),
        [
            ChildSpec("provider", lambda: Counter("provider"), shutdown=1.0),
            ChildSpec("keys", lambda: Supervisor("keys", SupervisorSpec(intensity=1, period=60)), shutdown=1.0),
        ],
    )


def router_shaped_root() -> Supervisor:
    providers = ChildSpec("providers", lambda: Supervisor("providers", SupervisorSpec(intensity=10, period=60)))
    return Supervisor("root", SupervisorSpec(intensity=10, period=60), [providers])


def at(sup: Supervisor, *path: str) -> Child:
    node: Child | None = sup
    for part in path:
        assert isinstance(node, Supervisor), f"{part}: its parent is not a running supervisor"
        node = node.child(part)
    assert node is not None, f"nothing at {'/'.join(path)}"
    return node


KEY = ("providers", "provider:x", "keys", "key:k0")


async def grow(root: Supervisor) -> None:
    """Everything below `providers` is added at run time, as the router does."""
    providers = at(root, "providers")
    assert isinstance(providers, Supervisor)
    await providers.add_child(ChildSpec("provider:x", provider_subtree))
    keys = at(root, "providers", "provider:x", "keys")
    assert isinstance(keys, Supervisor)
    await keys.add_child(key_spec("k0"))
    await keys.add_child(key_spec("k1"))


async def reserve(ref: ActorRef[KeyCommand]) -> int:
    grant = await ref.ask(lambda r: Reserve("req", "m", 1, Decimal(0), 1e9, r))
    assert isinstance(grant, Granted)
    return grant.reservation_id


async def crash(ref: ActorRef[CounterMsg]) -> None:
    await ref.tell(CrashNow())
    await trio.testing.wait_all_tasks_blocked()


def counter_ref(root: Supervisor) -> ActorRef[CounterMsg]:
    provider = at(root, "providers", "provider:x", "provider")
    assert isinstance(provider, Counter)
    return provider.ref


async def test_a_key_keeps_its_address_when_its_provider_crashes(autojump_clock: trio.testing.MockClock) -> None:
    root = router_shaped_root()
    async with store_running(), trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await grow(root)
        key = at(root, *KEY)
        assert isinstance(key, KeyActor) and (key.restarts, key.incarnation) == (0, 0)
        ref = key.ref
        rids = [await reserve(ref)]
        await crash(counter_ref(root))  # rest_for_one: the provider and the keys supervisor restart
        again = at(root, *KEY)
        assert isinstance(again, KeyActor) and again is not key
        assert again.ref is ref
        assert (again.restarts, again.incarnation) == (1, 1)
        rids.append(await reserve(ref))  # the old ref reaches the new instance
        keys = at(root, "providers", "provider:x", "keys")
        assert isinstance(keys, Supervisor)
        assert [(c.id, c.restarts, c.status) for c in keys.which_children()] == [
            ("key:k0", 1, "running"),
            ("key:k1", 1, "running"),
        ]
        assert len(set(rids)) == len(rids)
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()


async def test_runtime_children_survive_a_restart_of_the_whole_provider_subtree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    root = router_shaped_root()
    async with store_running(), trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await grow(root)
        subtree = at(root, "providers", "provider:x")
        ref = at(root, *KEY).ref
        rids = [await reserve(ref)]
        await crash(counter_ref(root))
        rids.append(await reserve(ref))
        await trio.sleep(1)
        await crash(counter_ref(root))  # a second crash within 60 s: provider:x gives up, providers restarts it
        new_subtree = at(root, "providers", "provider:x")
        assert new_subtree is not subtree and new_subtree.restarts == 1
        key = at(root, *KEY)
        assert key.ref is ref
        assert (key.restarts, key.incarnation) == (2, 2)
        keys = at(root, "providers", "provider:x", "keys")
        assert isinstance(keys, Supervisor)
        assert [c.id for c in keys.which_children()] == ["key:k0", "key:k1"]
        rids.append(await reserve(ref))
        assert len(set(rids)) == 3
        assert trio.current_time() == 1
        nursery.cancel_scope.cancel()


async def test_a_key_keeps_its_address_when_its_keys_supervisor_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    root = router_shaped_root()
    async with store_running(), trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await grow(root)
        k0 = at(root, *KEY).ref
        k1 = at(root, "providers", "provider:x", "keys", "key:k1").ref
        keys_before = at(root, "providers", "provider:x", "keys")
        rids = [await reserve(k0)]
        await k1.tell(InjectCrash("first"))
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        await k1.tell(InjectCrash("second"))  # keys (intensity 1) gives up; provider:x restarts it
        await trio.testing.wait_all_tasks_blocked()
        keys = at(root, "providers", "provider:x", "keys")
        assert isinstance(keys, Supervisor) and keys is not keys_before and keys.restarts == 1
        assert [(c.id, c.restarts) for c in keys.which_children()] == [("key:k0", 1), ("key:k1", 2)]
        assert at(root, *KEY).ref is k0 and at(root, "providers", "provider:x", "keys", "key:k1").ref is k1
        rids.append(await reserve(k0))
        rids.append(await reserve(k1))
        assert len(set(rids)) == 3
        assert at(root, "providers", "provider:x", "provider").restarts == 0  # rest_for_one: keys was last
        assert trio.current_time() == 2
        nursery.cancel_scope.cancel()


async def test_reservation_ids_never_repeat_across_incarnations(autojump_clock: trio.testing.MockClock) -> None:
    root = router_shaped_root()
    async with store_running(), trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await grow(root)
        ref = at(root, *KEY).ref
        seen: list[int] = []
        for round_ in range(4):
            seen += [await reserve(ref) for _ in range(3)]
            if round_ % 2:
                await ref.tell(InjectCrash("chaos"))  # the key alone restarts
                await trio.testing.wait_all_tasks_blocked()
            else:
                await crash(counter_ref(root))  # the provider crashes: the keys restart with it
            await trio.sleep(61)  # out of every intensity window
        assert at(root, *KEY).incarnation == 4
        assert len(set(seen)) == len(seen) == 12
        nursery.cancel_scope.cancel()


async def test_a_removed_child_stays_removed_when_its_ancestors_restart(autojump_clock: trio.testing.MockClock) -> None:
    root = router_shaped_root()
    async with store_running(), trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await grow(root)
        keys = at(root, "providers", "provider:x", "keys")
        assert isinstance(keys, Supervisor)
        old = at(root, "providers", "provider:x", "keys", "key:k1").ref
        assert await keys.remove_child("key:k1") is True
        await crash(counter_ref(root))
        await trio.sleep(1)
        await crash(counter_ref(root))  # the whole provider subtree restarts
        keys = at(root, "providers", "provider:x", "keys")
        assert isinstance(keys, Supervisor) and keys.restarts == 2
        assert [c.id for c in keys.which_children()] == ["key:k0"]
        # Added again, the id is a new address: the old ref stays dead.
        again = await keys.add_child(key_spec("k1"))
        assert again.ref is not old and again.incarnation == 0 and not old.alive
        nursery.cancel_scope.cancel()
