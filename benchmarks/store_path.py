"""What the request path pays the store, alone: the changes one routed request tells the store writer.

    PYTHONPATH=src python benchmarks/store_path.py [--requests 20000] [--rounds 7] [--concurrency 32]

A routed request with a budget makes four changes (the key's record at reserve and at settle, the budget
ledger at hold and at charge) with their history rows (a `held` and a `charged` row) and one decision row.
This script makes exactly those through the public `Outbox` (`save`, `append`, `drain`) from `concurrency`
trio tasks, each yielding once per request as a request does, with a store writer running on a
`MemoryStore`: no router, no upstream, so the figure is the store's share of the request path and nothing
else (`benchmarks/store.py` measures whole requests, where this share is lost in the noise of a shared
machine). The rows and records are built once, outside the timed loop: what is timed is handing them over.

Per round: CPU µs per request of the trio thread (`time.thread_time()`), the writer's flushes included
(they run on that thread for the memory store), minus the floor: the same tasks and checkpoints with no
store calls, run just before. A third run per round does the same over a `SqliteStore` (a real file,
its transactions in the worker thread): its trio-thread CPU minus the memory run's is what SQLite adds
to the request path and the event loop. Figures are medians over rounds; the last line is one
JSON object, for `benchmarks/ab.py --base <checkout> -- benchmarks/store_path.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import trio

from apikeyrouter.domain import budget, quota
from apikeyrouter.domain.circuit import Breaker
from apikeyrouter.domain.history import BudgetRow, DecisionRow
from apikeyrouter.domain.keystate import KeyRecord
from apikeyrouter.domain.lifecycle import Lifecycle
from apikeyrouter.domain.stats import Stats
from apikeyrouter.store import MemoryStore, SqliteStore
from apikeyrouter.store.writer import run_store

KEYS = 4


def one_round(requests: int, concurrency: int, *, hand_over: bool = True, sqlite: Path | None = None) -> float:
    record = KeyRecord(Lifecycle(since=0.0), quota.new_quota(quota.QuotaConfig(rpm=10**6), 0.0), Breaker(), Stats(),
                       Decimal(0), "fp")  # fmt: skip
    ledger = budget.new_ledger([budget.BudgetSpec("global", Decimal(10**6), 86_400.0)], 0.0)
    held = (BudgetRow("global", "held", "h", Decimal("0.01"), 0.0),)
    charged = (BudgetRow("global", "charged", "h", Decimal("0.005"), 0.0),)
    decision = (DecisionRow("r", "d", "k0", "p", "m", None, "ok", 1, 0.001, 0.0),)

    async def main() -> float:
        backend = MemoryStore() if sqlite is None else SqliteStore(sqlite)
        async with run_store(backend, flush_interval=0.05) as port:
            keys = [port.outbox() for _ in range(KEYS)]
            ledger_box = port.outbox()
            attempts = port.outbox()

            async def caller(n: int, offset: int) -> None:
                for i in range(n):
                    if not hand_over:  # the floor: the same tasks and checkpoints, no store
                        await trio.lowlevel.checkpoint()
                        continue
                    key = keys[(i + offset) % KEYS]
                    rid = f"k{(i + offset) % KEYS}"
                    ledger_box.save("budgets", "ledger", ledger, held)  # the hold
                    key.save("key", rid, record)  # the reserve
                    await trio.lowlevel.checkpoint()  # the upstream call
                    key.save("key", rid, record)  # the settle
                    attempts.append(decision)
                    ledger_box.save("budgets", "ledger", ledger, charged)  # the charge
                    for box in (key, ledger_box):  # as each actor's receive returns it
                        pending = box.drain()
                        if pending is not None:
                            await pending

            started = time.thread_time()
            async with trio.open_nursery() as nursery:
                for c in range(concurrency):
                    nursery.start_soon(caller, requests // concurrency, c)
            assert port.ref is not None
            return (time.thread_time() - started) / (requests // concurrency * concurrency) * 1e6

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    figures, floors, sqlite = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):  # interleaved: drift hits all alike
            floors.append(one_round(args.requests, args.concurrency, hand_over=False))
            figures.append(one_round(args.requests, args.concurrency))
            sqlite.append(one_round(args.requests, args.concurrency, sqlite=Path(tmp) / f"{n}.db"))
    added = statistics.median(q - f for q, f in zip(sqlite, figures, strict=True))
    cpu = statistics.median(f - z for f, z in zip(figures, floors, strict=True))
    print(f"store hand-over: {cpu:.2f} µs CPU per request over the floor of the same tasks and checkpoints "
          f"({statistics.median(floors):.2f} µs; median of {args.rounds} same-round differences; "
          f"rounds {', '.join(f'{f - z:.1f}' for f, z in zip(figures, floors, strict=True))})")  # fmt: skip
    print(f"on SQLite: {added:+.2f} µs CPU per request on the trio thread against the memory store (median of "
          f"same-round differences; the transactions run in SQLite's worker thread)")  # fmt: skip
    summary = {"requests": args.requests, "rounds": args.rounds, "store_cpu_us_per_request": round(cpu, 2),
               "floor_cpu_us_per_request": round(statistics.median(floors), 2),
               "sqlite_added_trio_thread_cpu_us": round(added, 2)}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
