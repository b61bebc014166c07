"""Records and rows as JSON-ready values, with every time moved between the trio clock and the wall clock.

The runtime keeps time on trio's clock, which starts anew in every process; a store that outlives the
process keeps wall-clock UTC seconds instead. `shift_record(record, delta)` moves every time a record
holds by `delta` seconds: `+wall_offset` on the way to disk, `-wall_offset` (of the process reading)
on the way back, so a key throttled until 12:00:00 UTC comes back throttled until the trio time that
is 12:00:00 UTC in the new process.

Which floats are times (and which are durations) is spelled out per record type below: a new time
field in a record must be added here too, or it would come back in the writer's clock.

A quota ring counts whole buckets (`head` is an absolute bucket index): a shift that is not a whole
number of buckets moves the ring up to one bucket later (`ceil`), so a restored window counts a
little longer, never shorter — the same direction quota.py errs in.

The JSON form is cattrs' unstructured form (Decimal as a string), so fields added to a record later
flow through without a schema change; `structure` rebuilds the attrs value.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import attrs
import cattrs

from apikeyrouter.domain.budget import Ledger
from apikeyrouter.domain.circuit import Breaker
from apikeyrouter.domain.history import BudgetRow, DecisionRow, HistoryRow, TransitionRow
from apikeyrouter.domain.keystate import KeyRecord
from apikeyrouter.domain.lifecycle import Lifecycle, Transition
from apikeyrouter.domain.quota import Quota
from apikeyrouter.domain.rates import Rates
from apikeyrouter.domain.stats import Stats

__all__ = ["RECORD_TYPES", "converter", "decode", "encode", "shift_record", "shift_row"]

RECORD_TYPES: dict[str, type[Any]] = {"key": KeyRecord, "budgets": Ledger}

converter = cattrs.Converter()
converter.register_unstructure_hook(Decimal, str)
converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))


def _t(t: float | None, delta: float) -> float | None:
    return None if t is None else t + delta


def _transition(tr: Transition, delta: float) -> Transition:
    return attrs.evolve(tr, at=tr.at + delta, until=_t(tr.until, delta))


def _lifecycle(lc: Lifecycle, delta: float) -> Lifecycle:
    return attrs.evolve(
        lc,
        since=lc.since + delta,
        until=_t(lc.until, delta),
        history=tuple(_transition(tr, delta) for tr in lc.history),
    )


def _quota(q: Quota, delta: float) -> Quota:
    rings = tuple(
        attrs.evolve(ring, head=ring.head + math.ceil(delta / spec.width))
        for ring, spec in zip(q.rings, q.config.windows, strict=True)
    )
    req, tok = (None if ln is None else attrs.evolve(ln, reset_at=ln.reset_at + delta) for ln in q.learned)
    learned = (req, tok)
    rate = attrs.evolve(q.rate, at=q.rate.at + delta, since=_t(q.rate.since, delta))
    return attrs.evolve(q, rings=rings, learned=learned, blocked_until=_t(q.blocked_until, delta), rate=rate)


def _breaker(b: Breaker, delta: float) -> Breaker:
    return attrs.evolve(b, open_until=_t(b.open_until, delta), probe_deadline=_t(b.probe_deadline, delta))


def _stats(st: Stats, delta: float) -> Stats:
    return attrs.evolve(st, last_at=_t(st.last_at, delta))


def _rates(r: Rates, delta: float) -> Rates:
    windows = {scope: {eid: attrs.evolve(e, at=e.at + delta) for eid, e in w.items()} for scope, w in r.windows.items()}
    return attrs.evolve(r, windows=windows)


def _ledger(ledger: Ledger, delta: float) -> Ledger:
    # Periods count from `origin`: moving it with the rest keeps each period's wall-clock bounds.
    return attrs.evolve(
        ledger,
        origin=ledger.origin + delta,
        holds={k: attrs.evolve(h, until=h.until + delta) for k, h in ledger.holds.items()},
        expired={k: attrs.evolve(e, at=e.at + delta) for k, e in ledger.expired.items()},
        rates=_rates(ledger.rates, delta),
    )


def shift_record(record: Any, delta: float) -> Any:
    match record:
        case KeyRecord():
            return attrs.evolve(
                record,
                lifecycle=_lifecycle(record.lifecycle, delta),
                quota=_quota(record.quota, delta),
                breaker=_breaker(record.breaker, delta),
                stats=_stats(record.stats, delta),
            )
        case Ledger():
            return _ledger(record, delta)
    raise TypeError(f"no time shift known for a {type(record).__name__} record")


def shift_row(row: HistoryRow, delta: float) -> HistoryRow:
    match row:
        case TransitionRow():
            return attrs.evolve(row, at=row.at + delta, until=_t(row.until, delta))
        case DecisionRow() | BudgetRow():
            return attrs.evolve(row, at=row.at + delta)
    raise TypeError(f"not a history row: {type(row).__name__}")


def encode(record: Any, wall_offset: float) -> Any:
    """A record in trio time -> its JSON-ready form in wall-clock time."""
    return converter.unstructure(shift_record(record, wall_offset))


def decode(kind: str, value: Any, wall_offset: float) -> Any:
    """The stored form of a `kind` record -> the record in this process's trio time."""
    return shift_record(converter.structure(value, RECORD_TYPES[kind]), -wall_offset)
