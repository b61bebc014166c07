"""The rich views, on a console of fixed width, from the fake's canned data."""

from __future__ import annotations

from typing import Any

from rich.console import Console, RenderableType

from apikeyrouter.debug import render
from tests.debug_fake import THROTTLE_WALL, canned_decisions, canned_keys, canned_transitions

NOW = 1000.0


def text_of(renderable: RenderableType, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def tree() -> dict[str, Any]:
    leaf = {"kind": "key", "status": "running", "mailbox": {"depth": 3, "capacity": 64}, "children": []}
    return {
        "name": "root",
        "kind": "supervisor",
        "status": "running",
        "restarts": 0,
        "mailbox": None,
        "last_crash": None,
        "children": [
            {**leaf, "name": "key:openai-1", "restarts": 1, "last_crash": "RuntimeError: boom"},
            {
                **leaf,
                "name": "key:openai-2",
                "restarts": 0,
                "last_crash": None,
                "mailbox": {"depth": 60, "capacity": 64},
            },
        ],
    }


def test_the_tree_shows_status_restarts_mailbox_and_last_crash() -> None:
    out = text_of(render.tree_view(tree()))
    assert "root [supervisor] running  restarts=0" in out
    assert "key:openai-1 [key] running  restarts=1  mailbox 3/64  last crash: RuntimeError: boom" in out
    assert "key:openai-2 [key] running  restarts=0  mailbox 60/64" in out


def test_a_throttled_key_shows_its_reset_time() -> None:
    out = text_of(render.keys_table(list(canned_keys(NOW).values()), NOW))
    row = next(line for line in out.splitlines() if line.startswith("openai-2"))
    assert "throttled" in row and "critical 3%" in row and "~4m12s (62%)" in row
    assert "until 12:34:56Z (in 42s)" in out
    assert "open (30s)" in out  # anthropic-1's breaker, half-open in 30s
    header = out.splitlines()[1]
    for column in (
        "id",
        "provider",
        "lifecycle",
        "capacity",
        "exhaustion",
        "breaker",
        "in-flight",
        "success",
        "latency",
        "spend",
    ):
        assert column in header
    assert "98.5%" in out and "412 ms" in out and "$1.2345" in out and "2/8" in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_a_key_in_full_with_its_transitions() -> None:
    key = canned_keys(NOW)["openai-2"]
    out = text_of(render.key_view(key, canned_transitions(NOW)["openai-2"], NOW))
    assert "fingerprint  fp:abcdefabcd" in out
    assert "until 12:34:56Z (in 42s)" in out
    assert "2026-05-01 12:34:11Z" in out and "active" in out and "429 rate_limited: Retry-After 42" in out
    assert "limits       rpm=500" in out


def test_decisions_show_choice_candidates_exclusions_and_explanation() -> None:
    out = text_of(render.decisions_view(canned_decisions(NOW), NOW), width=100)
    assert "2s ago" in out and "openai-1 0.91" in out
    assert "anthropic-1: breaker open" in out
    assert "openai-1: cheapest eligible key with capacity" in out
    assert "d-2" in out and "→ no key" in out


def test_odd_or_missing_fields_still_render() -> None:
    out = text_of(
        render.keys_table([{"id": "k[bold]x"}, {"id": "k2", "prediction": "soon", "latency_ms": {"p50": 10}}])
    )
    assert "k[bold]x" in out  # literal, not markup
    assert "p50 10 ms" in out
    assert "—" in out
    assert text_of(render.tree_view({"name": "lonely"}))


def test_events_are_one_line_each() -> None:
    out = text_of(render.event_text({"kind": "key.transition", "at": 12.5, "key": "openai-1", "to": "throttled"}))
    assert out.strip() == "12.500 key.transition key=openai-1 to=throttled"


def test_durations() -> None:
    assert [render.fmt_duration(s) for s in (0, 42, 252, 3900, 90000)] == ["0s", "42s", "4m12s", "1h05m", "1d01h"]


def test_wall_time_is_shown_in_utc() -> None:
    assert THROTTLE_WALL.endswith("Z")
    key = {"id": "k", "lifecycle": "exhausted", "lifecycle_until_wall": "2026-05-01T14:34:56+02:00"}
    assert "until 12:34:56Z" in text_of(render.keys_table([key]))


def invalid_and_open_keys() -> list[dict[str, Any]]:
    keys = list(canned_keys(NOW).values())
    keys[0] = {**keys[0], "id": "a-key-with-a-rather-long-identifier", "lifecycle": "invalid"}
    return keys


def test_a_narrow_screen_wraps_cells_and_names_the_columns_it_leaves_out() -> None:
    out = text_of(render.keys_table(invalid_and_open_keys(), NOW), width=60)
    assert max(len(line) for line in out.splitlines()) <= 60
    assert "…" not in out  # nothing cut
    assert out.splitlines()[1].split() == ["id", "lifecycle", "breaker"]  # whether each key can serve
    assert "invalid" in out and "throttled" in out and "open" in out and "(30s)" in out
    assert "a-key-with-a-rather-long-identifier" in out
    note = " ".join(out.split())
    assert "not shown at 60 columns: spend, latency, success, exhaustion, in-flight, provider, capacity" in note
    assert "inspect --wide shows every column" in note
    # With short ids, more fits at the same width.
    out = text_of(render.keys_table(list(canned_keys(NOW).values()), NOW), width=60)
    assert out.splitlines()[1].split() == ["id", "provider", "lifecycle", "capacity", "breaker"]
    assert "not shown at 60 columns: spend, latency, success, exhaustion, in-flight" in " ".join(out.split())


def test_a_wide_screen_shows_every_column_and_no_note() -> None:
    out = text_of(render.keys_table(invalid_and_open_keys(), NOW), width=200)
    header = out.splitlines()[1].split()
    assert header == [
        "id", "provider", "lifecycle", "capacity", "exhaustion", "breaker", "in-flight", "success", "latency", "spend",
    ]  # fmt: skip
    assert "a-key-with-a-rather-long-identifier" in out and "until 12:34:56Z (in 42s)" in out
    assert "not shown" not in out


def test_wide_never_wraps_a_cell() -> None:
    table = render.keys_table(invalid_and_open_keys(), NOW, wide=True)
    width = render.natural_width(table)
    out = text_of(table, width=width)
    assert "until 12:34:56Z (in 42s)" in out and "constrained 35%" in out and "not shown" not in out
    assert len(out.splitlines()) == 1 + 2 + 3 + 1  # title, header and rule, a line per key, one "until"


def test_excluded_keys_are_named_once_whatever_the_reason_says() -> None:
    decision = {
        "id": "dec-3",
        "chosen": "healthy",
        "excluded": {
            "invalid": "invalid: invalid (auth_invalid: openai-sim answered 401)",  # as the router words it
            "flaky": "flaky: already tried by this request",
            "tight": "throttled until 12:00:00Z",  # a reason that does not name its key
        },
        "excluded_total": 3,
    }
    out = text_of(render.decisions_view([decision], NOW), width=200)
    line = next(line for line in out.splitlines() if "excluded" in line)
    assert "invalid: invalid (auth_invalid" in line and "invalid: invalid: invalid" not in line
    assert "flaky: already tried" in line and "flaky: flaky" not in line
    assert "tight: throttled until 12:00:00Z" in line
