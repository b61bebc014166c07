"""The application's supervision tree, as data: the `ChildSpec`s the router runs.

    root (one_for_one)
    ├── store                                StoreWriter: persistence (started first, stopped last)
    ├── providers (one_for_one)
    │   └── provider:<id> (rest_for_one)    ProviderActor first, then its keys supervisor
    │       └── keys (one_for_one)          KeyActors
    ├── budgets                              BudgetActor: the money ledger
    └── router                               RouterActor: decisions only

Services added at run time (`add_service`: the proxy, the debug channel) start after these and so stop
before them.
"""

from __future__ import annotations

from collections.abc import Callable

from apikeyrouter.actors.board import SnapshotBoard
from apikeyrouter.actors.budget import BudgetActor
from apikeyrouter.actors.key import KeyActor, KeyMaterial
from apikeyrouter.actors.provider import ProviderActor
from apikeyrouter.actors.router import RouterActor
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.domain.keystate import KeySettings
from apikeyrouter.kernel.spec import ChildSpec, Restart, Strategy, SupervisorSpec
from apikeyrouter.observe import Event, EventBus
from apikeyrouter.secret import Secret
from apikeyrouter.store.port import StorePort
from apikeyrouter.store.writer import StoreWriter
from apikeyrouter.supervisors import Supervisor

__all__ = ["key_child", "provider_child", "root_supervisor"]

OnEvent = Callable[[Event], None]


def root_supervisor(
    *,
    on_event: OnEvent,
    make_store: Callable[[], StoreWriter],
    make_budgets: Callable[[], BudgetActor],
    make_router: Callable[[], RouterActor],
    grace: float,
) -> Supervisor:
    return Supervisor(
        "root",
        SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60),
        on_event=on_event,
        children=[
            # Generous: its stop writes everything still pending.
            ChildSpec("store", make_store, shutdown=max(grace, 10.0)),
            ChildSpec(
                "providers",
                lambda: Supervisor(
                    "providers",
                    SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=60),
                    on_event=on_event,
                ),
                shutdown=grace,
            ),
            ChildSpec("budgets", make_budgets, shutdown=1.0),
            ChildSpec("router", make_router, shutdown=1.0),
        ],
    )


def provider_child(
    provider_id: str,
    adapter: ProviderAdapter,
    *,
    board: SnapshotBoard,
    events: EventBus,
    grace: float,
    on_event: OnEvent,
) -> ChildSpec:
    def make_subtree() -> Supervisor:
        # rest_for_one: a provider crash restarts its keys (they use its client); a key crash
        # restarts that key alone (the keys supervisor is one_for_one).
        return Supervisor(
            f"provider:{provider_id}",
            SupervisorSpec(Strategy.REST_FOR_ONE, intensity=5, period=30),
            on_event=on_event,
            children=[
                ChildSpec(
                    "provider",
                    lambda: ProviderActor(provider_id, adapter, board=board, events=events),
                    shutdown=grace,
                ),
                ChildSpec(
                    "keys",
                    lambda: Supervisor(
                        "keys", SupervisorSpec(Strategy.ONE_FOR_ONE, intensity=10, period=30), on_event=on_event
                    ),
                    shutdown=grace,
                ),
            ],
        )

    # The subtree's grace bounds its whole stop (keys, then the provider draining its calls).
    return ChildSpec(f"provider:{provider_id}", make_subtree, shutdown=grace)


def key_child(
    settings: KeySettings,
    secret: Secret,
    *,
    store: StorePort,
    board: SnapshotBoard,
    events: EventBus,
    wall_offset: float,
    grace: float,
) -> ChildSpec:
    material = KeyMaterial(secret)  # outlives the key's restarts, so a rotation does too
    return ChildSpec(
        f"key:{settings.id}",
        lambda: KeyActor(settings, material, store=store, board=board, events=events, wall_offset=wall_offset),
        restart=Restart.PERMANENT,
        shutdown=grace,
    )
