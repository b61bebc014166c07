"""Rich renderings of debug-channel data: the actor tree, the key table, one key, decisions, events.

Every function takes the JSON shapes of `api.py` (as the debug channel sends them) and is tolerant of
missing or odd fields: the router's entries grow over time, and a half-filled entry should still render.
Values are put in `Text` objects, never interpolated into markup, so an id containing "[" stays literal.
`now` is the router's trio clock at answer time (the answer's `now`): `*_until` and `at` are on that clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

__all__ = [
    "KeysTable",
    "decisions_view",
    "event_text",
    "fmt_duration",
    "key_view",
    "keys_table",
    "natural_width",
    "overview",
    "tree_view",
]

_STATUS = {"running": "green", "starting": "cyan", "stopping": "yellow", "crashed": "bold red", "stopped": "dim"}
_LIFECYCLE = {
    "active": "green",
    "throttled": "yellow",
    "exhausted": "magenta",
    "invalid": "red",
    "disabled": "dim",
    "revoked": "bold red",
}
_CAPACITY = {"abundant": "green", "constrained": "yellow", "critical": "red", "exhausted": "bold red"}
_BREAKER = {"closed": "green", "half_open": "yellow", "half-open": "yellow", "open": "bold red"}
DASH = "—"


def fmt_duration(seconds: float) -> str:
    """42s, 4m12s, 2h03m, 3d04h: short and exact enough for a human."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _wall(value: Any, *, date: bool = False) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ" if date else "%H:%M:%SZ")


def _until(until: Any, wall: Any, now: float | None, *, date: bool = False) -> str | None:
    """'until 12:03:04Z (in 42s)', from whichever of the wall time and the trio time we have."""
    parts = []
    shown = _wall(wall, date=date)
    if shown:
        parts.append(f"until {shown}")
    t = _num(until)
    if t is not None and now is not None:
        left = t - now
        parts.append(f"(in {fmt_duration(left)})" if left > 0 else "(due)")
    return " ".join(parts) or None


def _ago(at: Any, now: float | None) -> str:
    t = _num(at)
    if t is None:
        return DASH
    if now is None:
        return f"t={t:.1f}"
    return f"{fmt_duration(now - t)} ago"


def _pct(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:.1f}%"


def _styled(value: Any, styles: Mapping[str, str]) -> Text:
    if value is None:
        return Text(DASH, "dim")
    text = str(value)
    return Text(text, styles.get(text, ""))


# -- tree -------------------------------------------------------------------------------------------


def _node_label(node: Mapping[str, Any]) -> Text:
    label = Text()
    label.append(str(node.get("name", "?")), "bold")
    label.append(f" [{node.get('kind', '?')}] ", "dim")
    status = str(node.get("status", "?"))
    label.append(status, _STATUS.get(status, ""))
    restarts = node.get("restarts") or 0
    label.append(f"  restarts={restarts}", "yellow" if restarts else "dim")
    mailbox = node.get("mailbox")
    if isinstance(mailbox, Mapping):
        depth, cap = mailbox.get("depth") or 0, mailbox.get("capacity") or 0
        full = cap and depth >= 0.8 * cap
        label.append(f"  mailbox {depth}/{cap}", "bold red" if full else "")
    crash = node.get("last_crash")
    if crash:
        label.append(f"  last crash: {crash}", "red")
    return label


def tree_view(node: Mapping[str, Any], *, _tree: Tree | None = None) -> Tree:
    """The supervision tree: name, kind, status, restarts, mailbox depth/capacity, last crash."""
    branch = Tree(_node_label(node), guide_style="dim") if _tree is None else _tree.add(_node_label(node))
    for child in node.get("children") or ():
        if isinstance(child, Mapping):
            tree_view(child, _tree=branch)
    return branch


# -- keys -------------------------------------------------------------------------------------------


def _lifecycle(key: Mapping[str, Any], now: float | None) -> Text:
    text = _styled(key.get("lifecycle"), _LIFECYCLE)
    until = _until(key.get("lifecycle_until"), key.get("lifecycle_until_wall"), now)
    if until and key.get("lifecycle") != "active":
        text.append(f"\n{until}")
    return text


def _capacity(key: Mapping[str, Any]) -> Text:
    text = _styled(key.get("capacity"), _CAPACITY)
    left = _num(key.get("capacity_left_pct"))
    if left is not None:
        text.append(f" {left:.0f}%")
    return text


def _prediction(key: Mapping[str, Any]) -> str:
    pred = key.get("prediction")
    if not isinstance(pred, Mapping):
        return DASH
    secs, conf = _num(pred.get("seconds_to_exhaustion")), _num(pred.get("confidence"))
    if secs is None:
        return DASH
    return f"~{fmt_duration(secs)}" + (f" ({conf * 100:.0f}%)" if conf is not None else "")


def _breaker(key: Mapping[str, Any], now: float | None) -> Text:
    """'open (30s)': open, half-open probe in 30s."""
    text = _styled(key.get("breaker"), _BREAKER)
    if key.get("breaker") == "open":
        # Relative only: the breaker's half-open probe is seconds away, a wall time adds little.
        t = _num(key.get("breaker_until"))
        if t is not None and now is not None:
            text.append(f" ({fmt_duration(t - now)})" if t > now else " (probe due)")
    return text


def _in_flight(key: Mapping[str, Any]) -> str:
    n, cap = key.get("in_flight"), key.get("max_in_flight")
    if n is None:
        return DASH
    return f"{n}/{cap}" if cap is not None else str(n)


def _success(key: Mapping[str, Any]) -> str:
    rate = _num(key.get("success_rate"))
    return DASH if rate is None else f"{rate * 100:.1f}%"


def _latency(key: Mapping[str, Any]) -> str:
    lat = key.get("latency_ms")
    if isinstance(lat, Mapping):  # percentiles
        return " ".join(f"{k} {v:.0f}" for k, v in lat.items() if _num(v) is not None) + " ms" if lat else DASH
    v = _num(lat)
    return DASH if v is None else f"{v:.0f} ms"


def _spend(key: Mapping[str, Any]) -> str:
    spend = key.get("spend")
    return DASH if spend in (None, "") else f"${spend}"


# (header, cell, right-aligned); the order columns are left out in when the screen is too narrow is below.
_KEY_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any], float | None], Text], bool], ...] = (
    ("id", lambda k, now: Text(str(k.get("id", "?")), "bold"), False),
    ("provider", lambda k, now: Text(str(k.get("provider", DASH))), False),
    ("lifecycle", _lifecycle, False),
    ("capacity", lambda k, now: _capacity(k), False),
    ("exhaustion", lambda k, now: Text(_prediction(k)), False),
    ("breaker", _breaker, False),
    ("in-flight", lambda k, now: Text(_in_flight(k)), True),
    ("success", lambda k, now: Text(_success(k)), True),
    ("latency", lambda k, now: Text(_latency(k)), True),
    ("spend", lambda k, now: Text(_spend(k)), True),
)
# Least telling first. id, lifecycle and breaker are never left out: they say whether a key can serve.
_LEAVE_OUT_ORDER = ("spend", "latency", "success", "exhaustion", "in-flight", "provider", "capacity")


def _keys_grid(
    rows: Sequence[Sequence[Text]], columns: Sequence[int], widths: Sequence[int] | None, *, wide: bool
) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for n, i in enumerate(columns):
        header, _, right = _KEY_COLUMNS[i]
        # Cells wrap (at spaces, else mid-word) rather than lose characters; --wide never wraps.
        width = None if widths is None else widths[n]
        table.add_column(header, justify="right" if right else "left", no_wrap=wide, overflow="fold", width=width)
    for row in rows:
        table.add_row(*(row[i] for i in columns))
    return table


def _share(minimums: Sequence[int], maximums: Sequence[int], room: int) -> list[int]:
    """Column widths: each its minimum (its longest word), the room left shared out towards each maximum."""
    spare = room - sum(minimums)
    needs = [hi - lo for lo, hi in zip(minimums, maximums, strict=True)]
    if spare >= sum(needs):
        return list(maximums)
    widths = [lo + spare * need // sum(needs) for lo, need in zip(minimums, needs, strict=True)]
    for i in sorted(range(len(widths)), key=lambda i: widths[i] - maximums[i]):
        if sum(widths) >= room:
            break
        widths[i] += 1
    return widths


@attrs.frozen
class KeysTable:
    """The key table, fitted to the width it is printed at. Nothing is ever cut: cells wrap at spaces, and
    when even the longest words do not fit, the least telling columns are left out and a line below says
    which. `wide`: every column, nothing wrapped (print it on a console `natural_width(...)` wide)."""

    keys: Sequence[Mapping[str, Any]]
    now: float | None = None
    wide: bool = False

    def fitted(self, width: int, console: Console) -> tuple[Table, list[str]]:
        rows = [[cell(key, self.now) for _, cell, _ in _KEY_COLUMNS] for key in self.keys]
        columns = list(range(len(_KEY_COLUMNS)))
        if self.wide:
            return _keys_grid(rows, columns, None, wide=True), []
        options = console.options.update_width(10_000)
        sizes = []
        for i, (header, _, _) in enumerate(_KEY_COLUMNS):
            cells = [Measurement.get(console, options, Text(header))] + [
                Measurement.get(console, options, row[i]) for row in rows
            ]
            sizes.append((max(m.minimum for m in cells), max(m.maximum for m in cells)))
        left_out: list[str] = []
        for name in _LEAVE_OUT_ORDER:
            room = width - (len(columns) - 1)  # one space between columns
            if sum(sizes[i][0] for i in columns) <= room:
                break
            columns.remove(next(i for i in columns if _KEY_COLUMNS[i][0] == name))
            left_out.append(name)
        room = width - (len(columns) - 1)
        if sum(sizes[i][0] for i in columns) > room:  # too narrow even for id, lifecycle, breaker: fold words
            return _keys_grid(rows, columns, None, wide=False), left_out
        widths = _share([sizes[i][0] for i in columns], [sizes[i][1] for i in columns], room)
        return _keys_grid(rows, columns, widths, wide=False), left_out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, left_out = self.fitted(options.max_width, console)
        yield Text(f"keys ({len(self.keys)})", no_wrap=False)
        yield table
        if left_out:
            yield Text(
                f"not shown at {options.max_width} columns: {', '.join(left_out)} "
                "(inspect --wide shows every column; inspect key ID shows one key in full)",
                "dim",
            )

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        rows = [[cell(key, self.now) for _, cell, _ in _KEY_COLUMNS] for key in self.keys]
        table = _keys_grid(rows, range(len(_KEY_COLUMNS)), None, wide=True)
        return Measurement.get(console, options, table)


def keys_table(keys: Sequence[Mapping[str, Any]], now: float | None = None, *, wide: bool = False) -> KeysTable:
    return KeysTable(keys, now, wide)


def key_view(key: Mapping[str, Any], transitions: Sequence[Mapping[str, Any]], now: float | None = None) -> Group:
    """One key in full (every field it has), then its recent transitions."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    shown: dict[str, Any] = {
        "id": Text(str(key.get("id", "?")), "bold"),
        "provider": key.get("provider"),
        "fingerprint": key.get("fingerprint"),
        "lifecycle": _lifecycle(key, now),
        "reason": key.get("lifecycle_reason"),
        "capacity": _capacity(key),
        "exhaustion": _prediction(key),
        "breaker": _breaker(key, now),
        "in-flight": _in_flight(key),
        "success": _success(key),
        "latency": _latency(key),
        "spend": _spend(key),
    }
    skip = {
        "id", "provider", "fingerprint", "lifecycle", "lifecycle_until", "lifecycle_until_wall",
        "lifecycle_reason", "capacity", "capacity_left_pct", "prediction", "breaker", "breaker_until",
        "breaker_until_wall", "in_flight", "max_in_flight", "success_rate", "latency_ms", "spend",
    }  # fmt: skip
    for name, value in key.items():
        if name not in skip:
            shown[name] = value
    for name, value in shown.items():
        if isinstance(value, Text):
            facts.add_row(name, value)
        elif value in (None, "", [], {}):
            facts.add_row(name, Text(DASH, "dim"))
        elif isinstance(value, Mapping):
            facts.add_row(name, Text(", ".join(f"{k}={v}" for k, v in value.items())))
        elif isinstance(value, list):
            facts.add_row(name, Text(", ".join(map(str, value))))
        else:
            facts.add_row(name, Text(str(value)))
    history = Table(
        title=f"recent transitions ({len(transitions)})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("when", "from", "to", "reason", "until"):
        history.add_column(column, overflow="fold")
    for tr in transitions:
        when = _wall(tr.get("at_wall"), date=True) or _ago(tr.get("at"), now)
        history.add_row(
            Text(when),
            _styled(tr.get("from"), _LIFECYCLE),
            _styled(tr.get("to"), _LIFECYCLE),
            Text(str(tr.get("reason") or DASH)),
            Text(_until(tr.get("until"), tr.get("until_wall"), now) or DASH),
        )
    return Group(facts, Text(""), history)


# -- decisions and events ---------------------------------------------------------------------------


def _candidates(decision: Mapping[str, Any]) -> str:
    parts = []
    for cand in (decision.get("candidates") or [])[:3]:
        if isinstance(cand, Mapping):
            score = _num(cand.get("score"))
            parts.append(f"{cand.get('key')} {score:.2f}" if score is not None else str(cand.get("key")))
    return ", ".join(parts) or DASH


def _excluded(decision: Mapping[str, Any]) -> str:
    excluded = decision.get("excluded") or {}
    total = decision.get("excluded_total", len(excluded) if isinstance(excluded, Mapping) else 0)
    if not isinstance(excluded, Mapping) or not total:
        return DASH
    # The router's reasons already name their key ("invalid: invalid (401 ...)"): never name it twice.
    shown = "; ".join(str(v) if str(v).startswith(f"{k}:") else f"{k}: {v}" for k, v in list(excluded.items())[:3])
    more = total - min(3, len(excluded))
    return shown + (f" (+{more} more)" if more > 0 else "")


def decisions_view(decisions: Sequence[Mapping[str, Any]], now: float | None = None) -> Group:
    """One block per decision (newest last): what was asked, what was chosen, and why, in full width.

    A table would squeeze the explanation into a narrow column; it is the point of this view.
    """
    blocks: list[RenderableType] = [Text(f"routing decisions ({len(decisions)})", "bold")]
    for d in decisions:
        head = Text()
        head.append(str(d.get("id", DASH)), "bold")
        head.append(f"  {_ago(d.get('at'), now)}", "dim")
        for name in ("request_id", "model", "objective"):
            if d.get(name):
                head.append(f"  {name.removesuffix('_id')}=", "dim")
                head.append(str(d[name]))
        chosen = d.get("chosen")
        head.append("  → ")
        head.append(str(chosen) if chosen else "no key", "bold green" if chosen else "bold red")
        body = Table.grid(padding=(0, 1))
        body.add_column(style="dim", no_wrap=True)
        body.add_column(overflow="fold")
        body.add_row("  why", Text(str(d.get("explanation") or DASH)))
        body.add_row("  candidates", Text(_candidates(d)))
        body.add_row("  excluded", Text(_excluded(d)))
        blocks.extend([Text(""), head, body])
    return Group(*blocks)


def event_text(event: Mapping[str, Any]) -> Text:
    """One event on one line: its time on the router's clock, its kind, then its fields."""
    text = Text()
    at = _num(event.get("at"))
    text.append(f"{at:12.3f} " if at is not None else " " * 13, "dim")
    text.append(str(event.get("kind", "?")), "bold cyan")
    for name, value in event.items():
        if name not in ("kind", "at"):
            text.append(f" {name}=", "dim")
            text.append(str(value))
    return text


def overview(
    tree: Mapping[str, Any], keys: Sequence[Mapping[str, Any]], now: float | None = None, *, wide: bool = False
) -> RenderableType:
    return Group(tree_view(tree), Text(""), keys_table(keys, now, wide=wide))


def natural_width(renderable: RenderableType) -> int:
    """The width `renderable` needs to be shown without wrapping or cutting anything (for --wide)."""
    console = Console(width=10_000)
    return Measurement.get(console, console.options, renderable).maximum
