"""Calendar periods and client/team rate windows: pure rules, plain sync tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apikeyrouter.domain import budget, rates
from apikeyrouter.domain.budget import BudgetRefused, BudgetSoftExceeded, BudgetSpec
from apikeyrouter.domain.period import CalendarPeriod, bounds
from apikeyrouter.domain.rates import RateLimit

UTC = dt.UTC


def wall(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("unit", "at", "start", "end"),
    [
        ("hour", wall(2027, 3, 9, 14, 25), wall(2027, 3, 9, 14), wall(2027, 3, 9, 15)),
        ("day", wall(2027, 3, 9, 14, 25), wall(2027, 3, 9), wall(2027, 3, 10)),
        ("week", wall(2027, 3, 10, 1), wall(2027, 3, 8), wall(2027, 3, 15)),  # ISO weeks start on Monday
        ("month", wall(2027, 12, 31, 23, 59), wall(2027, 12, 1), wall(2028, 1, 1)),
        ("month", wall(2028, 2, 29, 12), wall(2028, 2, 1), wall(2028, 3, 1)),
    ],
)
def test_periods_are_cut_on_the_calendar(unit: str, at: float, start: float, end: float) -> None:
    assert bounds(CalendarPeriod(unit), at) == (start, end)  # type: ignore[arg-type]


def test_a_day_in_a_timezone_is_its_local_day_even_when_daylight_saving_makes_it_23_hours() -> None:
    paris = CalendarPeriod("day", "Europe/Paris")
    start, end = bounds(paris, wall(2027, 3, 28, 12))  # clocks go forward that night
    assert start == wall(2027, 3, 27, 23) and end == wall(2027, 3, 28, 22)
    assert end - start == 23 * 3600


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Base'"):
        CalendarPeriod("day", "Mars/Base")


def test_a_ledger_on_a_calendar_resets_at_the_month_boundary_of_its_wall_clock() -> None:
    offset = wall(2027, 1, 31, 23, 59)  # trio time 0 is one minute before February
    spec = BudgetSpec("client:acme", Decimal("1"), calendar=CalendarPeriod("month"))
    ledger = budget.new_ledger([spec], 0.0, wall_offset=offset)
    ledger, _ = budget.reserve(ledger, "h1", ["client:acme"], Decimal("1"), 1.0, until=10.0)
    ledger, _ = budget.settle(ledger, "h1", Decimal("1"), 2.0)
    _, events = budget.reserve(ledger, "h2", ["client:acme"], Decimal("0.5"), 59.0, until=100.0)
    assert isinstance(events[0], BudgetRefused)
    ledger, events = budget.reserve(ledger, "h2", ["client:acme"], Decimal("0.5"), 61.0, until=100.0)
    assert not isinstance(events[0], BudgetRefused)
    assert budget.period_bounds(ledger, spec, 61.0) == (60.0, wall(2027, 3, 1) - offset)


def test_a_soft_budget_holds_past_its_limit_and_says_so() -> None:
    ledger = budget.new_ledger([BudgetSpec("team:t", Decimal("1"), mode="soft")], 0.0)
    ledger, _ = budget.reserve(ledger, "h1", ["team:t"], Decimal("0.8"), 0.0, until=10.0)
    ledger, events = budget.reserve(ledger, "h2", ["team:t"], Decimal("0.8"), 0.0, until=10.0)
    assert [type(e) for e in events] == [budget.BudgetReserved, BudgetSoftExceeded]
    status = budget.status(ledger, "team:t", 0.0)
    assert status is not None and status.reserved == Decimal("1.6")


def test_a_template_gives_each_new_client_its_own_budget_in_the_step_that_holds_on_it() -> None:
    ledger = budget.set_templates(budget.new_ledger([], 0.0), [BudgetSpec("client:", Decimal("1"))])
    ledger, _ = budget.reserve(ledger, "a1", ["global", "client:a"], Decimal("1"), 0.0, until=9.0)
    _, events = budget.reserve(ledger, "a2", ["client:a"], Decimal("0.1"), 0.0, until=9.0)
    assert isinstance(events[0], BudgetRefused) and events[0].budget == "client:a"
    ledger, events = budget.reserve(ledger, "b1", ["client:b"], Decimal("1"), 0.0, until=9.0)
    assert not isinstance(events[0], BudgetRefused)
    assert set(ledger.budgets) == {"client:a", "client:b"}


def test_reconfigure_drops_what_is_no_longer_configured_and_puts_template_budgets_on_the_new_template() -> None:
    old = [BudgetSpec("global", Decimal("1")), BudgetSpec("key:k1", Decimal("1"))]
    ledger = budget.set_templates(budget.new_ledger(old, 0.0), [BudgetSpec("client:", Decimal("1"))])
    ledger, _ = budget.reserve(ledger, "h", ["global", "key:k1", "client:a"], Decimal("0.5"), 0.0, until=9.0)
    ledger, _ = budget.settle(ledger, "h", Decimal("0.4"), 1.0)
    new = budget.reconfigure(
        ledger, [], [BudgetSpec("client:", Decimal("5"), mode="soft")], 2.0, later=lambda b: b == "key:k1"
    )
    assert set(new.budgets) == {"key:k1", "client:a"}  # global: no longer configured, no longer limiting
    client = budget.status(new, "client:a", 2.0)
    assert client is not None and (client.spec.limit, client.spec.mode) == (Decimal("5"), "soft")
    assert client.spent == Decimal("0.4")
    _, events = budget.reserve(new, "h2", ["global"], Decimal("3"), 2.0, until=9.0)
    assert not isinstance(events[0], BudgetRefused)


def test_rpm_admits_exactly_its_limit_in_any_sixty_seconds_and_release_gives_room_back() -> None:
    state = rates.new_rates([RateLimit("client:a", rpm=2)])
    state, refused = rates.admit(state, "r1", ["client:a"], 10, 0.0)
    state, refused = rates.admit(state, "r2", ["client:a"], 10, 30.0)
    assert refused is None
    _, refused = rates.admit(state, "r3", ["client:a"], 10, 59.0)
    assert refused is not None and (refused.window, refused.retry_at) == ("rpm", 60.0)
    state = rates.release(state, "r2")  # never sent: its place is free again
    state, refused = rates.admit(state, "r3", ["client:a"], 10, 59.0)
    assert refused is None
    _, refused = rates.admit(state, "r4", ["client:a"], 10, 60.5)  # r1 slid out; r3 still in
    assert refused is None and rates.usage(state, "client:a", 60.5) == (1, 10)


def test_tpm_counts_the_worst_case_then_the_actual_tokens() -> None:
    state = rates.new_rates([RateLimit("team:t", tpm=100)])
    state, _ = rates.admit(state, "r1", ["team:t"], 80, 0.0)
    _, refused = rates.admit(state, "r2", ["team:t"], 30, 1.0)
    assert refused is not None and refused.window == "tpm" and refused.retry_at == 60.0
    state = rates.settle(state, "r1", 20)
    state, refused = rates.admit(state, "r2", ["team:t"], 30, 1.0)
    assert refused is None and rates.usage(state, "team:t", 1.0) == (2, 50)
    _, refused = rates.admit(state, "big", ["team:t"], 101, 2.0)
    assert refused is not None and refused.retry_at is None  # bigger than the window: never fits
