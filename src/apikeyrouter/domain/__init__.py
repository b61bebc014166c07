"""Pure rules: functions of (state, event, now). No I/O, no trio, no clock reads.

Use the modules as namespaces — their verbs deliberately share names (`quota.reserve`,
`budget.reserve`, `lifecycle.effective`, `circuit.effective`)::

    from apikeyrouter.domain import budget, circuit, cost, health, lifecycle, quota, scoring, stats
    from apikeyrouter.domain.index import KeyIndex

Modules:
    failures    failure classes -> actions (retry elsewhere? breaker counts? key effect?)
    lifecycle   active / throttled / exhausted / invalid / disabled / revoked, audited transitions
    quota       sliding windows, learned header limits, capacity state, exhaustion prediction
    circuit     closed / open / half-open breaker with one deadline-bound probe
    health      provider degraded / recovered from slotted counters of its keys' calls
    stats       success and latency EWMAs, counts
    cost        exact Decimal cost and worst case from per-1M prices
    budget      hard budgets with idempotent reserve / settle / release
    scoring     KeyView, objectives and weights, eligibility with human reasons, score breakdown
    index       KeyIndex: per-model ranked index for top-k decisions without scanning
    walltime    render_wall: the one rendering of a trio time for humans (ISO-8601 UTC, ms)

Conventions shared by every module:
- Time is `now: float`, trio clock seconds, always passed in. Timed states (throttle until t,
  breaker cooldown, probe deadline, window slide, budget period) are computed lazily from `now`;
  each module's `effective(state, ..., now)` returns the state as of `now`, and every other
  function applies it first.
- States and events are frozen attrs classes; transitions return the new state and a list of
  past-tense events. Refusals are values, never exceptions (see each module's docstring);
  `ValueError` is raised only for programming errors (negative tokens, an unknown objective).
- Money is `Decimal`.
"""
