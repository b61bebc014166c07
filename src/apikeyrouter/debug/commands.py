"""`apikeyrouter inspect`: show a running router's actors, keys, decisions and events.

    apikeyrouter inspect [--socket PATH | --port N] [--json] [--wide] [--watch] [--interval S]
    apikeyrouter inspect key ID [--limit N] [--json]
    apikeyrouter inspect decisions [--limit N] [--json]
    apikeyrouter inspect events [--kind K ...] [--json]

Which socket: `--socket`, else `$APIKEYROUTER_DEBUG_SOCKET`, else the default path for `--port`, else the
one live socket found in the default places (several: we ask you to choose). Every failure to reach the
router is one line on stderr and exit status 1; Ctrl-C ends `--watch` and `events` with status 0.

The key table fits the terminal (80 columns when piped, or $COLUMNS): cells wrap, never cut, and columns
left out for want of room are named below the table. `--wide` prints every column unwrapped, as wide as
it needs to be.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import attrs
import click
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from apikeyrouter.debug import render
from apikeyrouter.debug.client import DebugClient, connect, data_of
from apikeyrouter.debug.paths import candidate_socket_dirs, default_socket_path, discover_sockets
from apikeyrouter.errors import DebugChannelError, DebugRequestError

__all__ = ["ENV_SOCKET", "inspect"]

ENV_SOCKET = "APIKEYROUTER_DEBUG_SOCKET"


@attrs.frozen
class _Target:
    socket: str | None
    port: int | None
    as_json: bool
    timeout: float
    wide: bool = False

    def merged(self, socket: str | None, as_json: bool) -> _Target:
        """Subcommands accept --socket/--json too (`inspect key X --json` reads naturally)."""
        return attrs.evolve(self, socket=socket or self.socket, as_json=as_json or self.as_json)


def _fail(message: str) -> NoReturn:
    click.echo(f"apikeyrouter inspect: {message}", err=True)
    sys.exit(1)


def _resolve_socket(target: _Target) -> str:
    if target.socket:
        return target.socket
    env = os.environ.get(ENV_SOCKET)
    if env:
        return env
    if target.port is not None:
        return str(default_socket_path(target.port, create=False))
    found = discover_sockets()
    if len(found) == 1:
        return str(found[0])
    places = " or ".join(f"{d}/{pattern}" for d, pattern in candidate_socket_dirs())
    if not found:
        _fail(
            f"no running apikeyrouter found (no live debug socket at {places}); "
            f"pass --socket PATH (serve prints it at startup) or set {ENV_SOCKET}"
        )
    listed = ", ".join(map(str, found))
    _fail(f"several apikeyrouter processes are running; choose one with --socket: {listed}")


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _run(fn: Callable[..., Awaitable[None]], *args: Any, path: str, timeout: float) -> None:
    """trio.run, with every expected failure turned into one line and exit status 1."""
    try:
        trio.run(fn, *args)
    except BaseException as raw:
        exc = _single(raw)
        if isinstance(exc, KeyboardInterrupt):
            return  # Ctrl-C is how --watch and events end
        if isinstance(exc, DebugRequestError):
            _fail(f"{exc} [{exc.code}]")
        if isinstance(exc, DebugChannelError):
            _fail(str(exc))
        if isinstance(exc, trio.TooSlowError):
            _fail(f"no answer from {path} within {timeout:g}s")
        raise


def _console(wide_for: RenderableType | None = None) -> Console:
    """A console for the terminal; as wide as `wide_for` needs when given (--wide), however narrow that is."""
    console = Console(highlight=False, soft_wrap=False)
    if wide_for is not None:
        console.width = max(console.width, render.natural_width(wide_for))
    return console


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


# -- data -------------------------------------------------------------------------------------------


async def _fetch_overview(path: str, target: _Target) -> dict[str, Any]:
    with trio.fail_after(target.timeout):
        async with await connect(path) as client:
            tree = await client.call("tree")
            keys_answer = await client.request({"op": "keys"})
    return {
        "socket": path,
        "now": keys_answer.get("now"),
        "now_wall": keys_answer.get("now_wall"),
        "tree": tree,
        "keys": data_of(keys_answer, path),
    }


def _overview_view(doc: dict[str, Any], note: RenderableType | None = None, *, wide: bool = False) -> RenderableType:
    header = Text(f"apikeyrouter at {doc['socket']}", "bold")
    if doc.get("now_wall"):
        header.append(f"  ·  {doc['now_wall']}", "dim")
    parts: list[RenderableType] = [header, render.overview(doc["tree"], doc["keys"], doc.get("now"), wide=wide)]
    if note is not None:
        parts.append(note)
    return Group(*parts)


async def _show_overview(path: str, target: _Target) -> None:
    doc = await _fetch_overview(path, target)
    if target.as_json:
        _print_json(doc)
    else:
        view = _overview_view(doc, wide=target.wide)
        _console(view if target.wide else None).print(view)


async def _watch(path: str, target: _Target, interval: float) -> None:
    doc = await _fetch_overview(path, target)  # the first failure is fatal: nothing to show yet
    view = _overview_view(doc, wide=target.wide)
    console = _console(view if target.wide else None)
    with Live(view, console=console, auto_refresh=False, transient=False) as live:
        live.refresh()
        while True:
            await trio.sleep(interval)
            try:
                doc = await _fetch_overview(path, target)
                view = _overview_view(doc, wide=target.wide)
                if target.wide:
                    console.width = max(console.width, render.natural_width(view))
                live.update(view, refresh=True)
            except (DebugChannelError, trio.TooSlowError) as exc:
                message = str(exc) or f"no answer within {target.timeout:g}s"
                note = Text(f"connection lost: {message}; retrying every {interval:g}s", "bold red")
                live.update(_overview_view(doc, note, wide=target.wide), refresh=True)


async def _show_key(path: str, target: _Target, key_id: str, limit: int) -> None:
    with trio.fail_after(target.timeout):
        async with await connect(path) as client:
            answer = await client.request({"op": "key", "id": key_id})
            key = data_of(answer, path)
            transitions = await client.call("transitions", key=key_id, limit=limit)
    if target.as_json:
        _print_json({"key": key, "transitions": transitions})
    else:
        _console().print(render.key_view(key, transitions, answer.get("now")))


async def _show_decisions(path: str, target: _Target, limit: int) -> None:
    with trio.fail_after(target.timeout):
        async with await connect(path) as client:
            answer = await client.request({"op": "decisions", "limit": limit})
    decisions = data_of(answer, path)
    if target.as_json:
        _print_json({"decisions": decisions})
    else:
        _console().print(render.decisions_view(decisions, answer.get("now")))


async def _follow_events(path: str, target: _Target, kinds: tuple[str, ...]) -> None:
    with trio.fail_after(target.timeout):
        client: DebugClient = await connect(path)
    console = _console()
    async with client:
        with trio.fail_after(target.timeout):
            data_of(await client.request({"op": "subscribe", "events": list(kinds)}), path)
        while True:
            answer = await client.receive()
            if answer is None:
                raise DebugChannelError(f"the router at {path} closed the event stream", path=path)
            event = data_of(answer, path)
            if target.as_json:
                click.echo(json.dumps(event))
            else:
                console.print(render.event_text(event))


# -- commands ---------------------------------------------------------------------------------------

_socket_option = click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    help=f"the debug socket (default: ${ENV_SOCKET}, else the one running router found)",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")


@click.group(invoke_without_command=True)
@_socket_option
@click.option("--port", type=click.IntRange(1, 65535), help="find the socket of the router serving on this port")
@_json_option
@click.option("--wide", is_flag=True, help="every column of the key table, nothing wrapped (wider than the screen)")
@click.option("--watch", is_flag=True, help="refresh the view until Ctrl-C")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="--watch refresh")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="seconds per request")
@click.pass_context
def inspect(
    ctx: click.Context,
    socket_path: str | None,
    port: int | None,
    as_json: bool,
    wide: bool,
    watch: bool,
    interval: float,
    timeout: float,
) -> None:
    """Show a running router: the actor tree and every key (subcommands for more)."""
    target = _Target(socket_path, port, as_json, timeout, wide)
    ctx.obj = target
    if ctx.invoked_subcommand is not None:
        return
    if watch and as_json:
        raise click.UsageError("--watch and --json do not go together")
    path = _resolve_socket(target)
    if watch:
        _run(_watch, path, target, interval, path=path, timeout=timeout)
    else:
        _run(_show_overview, path, target, path=path, timeout=timeout)


@inspect.command("key")
@click.argument("key_id")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="transitions to show")
@_socket_option
@_json_option
@click.pass_obj
def key_command(target: _Target, key_id: str, limit: int, socket_path: str | None, as_json: bool) -> None:
    """One key in full, with its recent lifecycle transitions."""
    target = target.merged(socket_path, as_json)
    path = _resolve_socket(target)
    _run(_show_key, path, target, key_id, limit, path=path, timeout=target.timeout)


@inspect.command("decisions")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@_socket_option
@_json_option
@click.pass_obj
def decisions_command(target: _Target, limit: int, socket_path: str | None, as_json: bool) -> None:
    """The latest routing decisions, with their explanations."""
    target = target.merged(socket_path, as_json)
    path = _resolve_socket(target)
    _run(_show_decisions, path, target, limit, path=path, timeout=target.timeout)


async def _show_policies(path: str, target: _Target) -> None:
    with trio.fail_after(target.timeout):
        async with await connect(path) as client:
            answer = await client.request({"op": "policies"})
    doc = data_of(answer, path)
    if target.as_json:
        _print_json(doc)
        return
    console = _console()
    console.print(f"policies ({len(doc['policies'])}):")
    for p in doc["policies"]:
        console.print(f"  {p['id']}  {p['scope']}  {p['kind']}  {p.get('description', '')}".rstrip(), markup=False)
    console.print("recent changes:")
    for a in doc["audit"]:
        console.print(f"  {a['at_wall']}  {a['who']}  {a['action']}  {a['policy']}", markup=False)
    console.print("budgets:")
    for bid, b in sorted(doc["budgets"].items()):
        left = b.get("remaining", "?")
        console.print(
            f"  {bid}  {b.get('mode', 'hard')}  spent {b['spent']} of {b['limit']}, {left} left", markup=False
        )


@inspect.command("policies")
@_socket_option
@_json_option
@click.pass_obj
def policies_command(target: _Target, socket_path: str | None, as_json: bool) -> None:
    """The live policies, their latest changes and every budget."""
    target = target.merged(socket_path, as_json)
    path = _resolve_socket(target)
    _run(_show_policies, path, target, path=path, timeout=target.timeout)


@inspect.command("events")
@click.option("--kind", "kinds", multiple=True, metavar="K", help="an event kind or prefix (repeatable), e.g. key")
@_socket_option
@_json_option
@click.pass_obj
def events_command(target: _Target, kinds: tuple[str, ...], socket_path: str | None, as_json: bool) -> None:
    """Follow the event stream until Ctrl-C (--json: one JSON object per line)."""
    target = target.merged(socket_path, as_json)
    path = _resolve_socket(target)
    _run(_follow_events, path, target, kinds, path=path, timeout=target.timeout)
