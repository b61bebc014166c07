"""The actors, one per file: `KeyActor` (key.py), `ProviderActor` (provider.py), `RouterActor` (router.py),
`BudgetActor` (budget.py), and the `SnapshotBoard` (board.py) where they publish their frozen snapshots.
The kernel they are built on (`Actor`, `ActorRef`, `Reply`) is `apikeyrouter.kernel`."""
