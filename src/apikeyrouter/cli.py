"""The `apikeyrouter` command line (click).

A process that cannot start (its port taken, its debug socket unusable, its config unreadable) says why in
one line on stderr and exits 1. Anything else that escapes, or anything after the process announced that
it listens, keeps its traceback: a bug must never look like a configuration problem.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import click

from apikeyrouter.config import bind_allowed, load_config
from apikeyrouter.debug.commands import inspect
from apikeyrouter.errors import ConfigError, DebugChannelError
from apikeyrouter.ops_commands import budgets, keys
from apikeyrouter.policy_commands import policy


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside `exc`, however deeply trio's nurseries nested them in groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _listen_failure(exc: OSError, where: str, hint: str) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: {exc.strerror or exc} (is the host name right?)"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use ({hint})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges; {hint})"
    reason = exc.strerror or str(exc)
    return f"cannot start: {reason}" + (f": {exc.filename}" if exc.filename else "")


def startup_failure(exc: BaseException, *, host: str, port: int, hint: str) -> list[str] | None:
    """One line per reason `exc` (raised while starting) stopped the process, or None when something in
    it is not a known startup failure: then it is a bug and its traceback must show."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines: list[str] = []
    for leaf in _leaves(exc):
        if isinstance(leaf, ConfigError):
            found = list(leaf.errors)
        elif isinstance(leaf, DebugChannelError):
            found = [str(leaf)]
        elif isinstance(leaf, OSError):
            found = [_listen_failure(leaf, where, hint)]
        else:
            return None
        lines.extend(line for line in found if line not in lines)
    return lines or None


def _run_until_stopped(
    main_fn: Callable[[], Awaitable[None]],
    *,
    started: Callable[[], bool],
    host: str,
    port: int,
    hint: str,
    interrupted_status: int = 130,
) -> None:
    """trio.run(main_fn), with a failure to start turned into one line per reason and exit status 1."""
    import trio

    try:
        trio.run(main_fn)
    except BaseException as exc:  # inspected, then re-raised unless it is a startup failure or Ctrl-C
        leaves = list(_leaves(exc))
        if leaves and all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            # Ctrl-C before the signal handlers were installed (still starting), or the simulator's stop.
            raise SystemExit(interrupted_status) from None
        lines = None if started() else startup_failure(exc, host=host, port=port, hint=hint)
        if lines is None:
            raise
        for line in lines:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1) from None


@click.group()
@click.version_option(package_name="apikeyrouter")
def main() -> None:
    """apikeyrouter: route LLM traffic across many API keys."""


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE as `serve` would (secrets from the environment included), without starting anything."""
    from apikeyrouter.adapters.factory import build_adapters

    try:
        config = load_config(file)
        build_adapters(config)  # the adapters `serve` would build, by the same factory
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1) from None
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    if (refusal := bind_allowed(config)) is not None:
        click.echo(f"error: {refusal}", err=True)
        raise SystemExit(1)
    click.echo(f"config OK: {len(config.providers)} providers, {len(config.keys)} keys")
    host = config.server.host
    click.echo(f"http: {f'[{host}]' if ':' in host else host}:{config.server.port}")
    debug = f"unix socket {config.debug.socket}" if config.debug.enabled else "disabled"
    click.echo(f"debug channel: {debug}")


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="sim.toml with [defaults] and [[keys]] behaviour (see docs/sim.md).",
)
def sim(port: int, host: str, config_path: Path | None) -> None:
    """Serve a simulated OpenAI + Anthropic provider (no keys, no network needed)."""
    import structlog
    import trio

    from apikeyrouter.sim import SimConfig, SimServer, load_sim_config

    try:
        config = load_sim_config(config_path) if config_path is not None else SimConfig()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    # Logs go to stderr so stdout carries only the "listening on" line scripts parse.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    server = SimServer(config)
    listening = False

    async def run() -> None:
        nonlocal listening
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve, host, port)
            listening = True
            # A line scripts (and benchmarks/sim.py) can wait for and parse.
            click.echo(f"apikeyrouter sim listening on http://{host}:{bound}", err=False)

    # Ctrl-C is how the simulator stops: status 0.
    _run_until_stopped(run, started=lambda: listening, host=host, port=port, hint="try --port 0", interrupted_status=0)


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="router.toml"
)
def serve(config_path: Path) -> None:
    """Run the supervision tree and the OpenAI-compatible proxy described by a config file."""
    from apikeyrouter.adapters.factory import build_adapters
    from apikeyrouter.observe.logs import configure_logging
    from apikeyrouter.standalone import Started, describe, run_standalone

    try:
        config = load_config(config_path)
        build_adapters(config)  # refuse here, in one line, what would otherwise fail after "listening on"
        if (refusal := bind_allowed(config)) is not None:
            raise ConfigError(refusal, path="config.server.host")
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1) from None
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    configure_logging(config.logging.level, config.logging.format)
    announced = False

    def announce(started: Started) -> None:
        nonlocal announced
        announced = True
        for line in describe(started, config):
            click.echo(line)
        sys.stdout.flush()

    _run_until_stopped(
        lambda: run_standalone(config, config_path=config_path, on_started=announce),
        started=lambda: announced,
        host=config.server.host,
        port=config.server.port,
        hint=f"set [server] port in {config_path} to a free port, or 0 for any",
    )


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Proxy port.")
def demo(port: int) -> None:
    """Start the simulated provider and the proxy with simulated keys (tight, invalid, flaky, healthy)."""
    from apikeyrouter.demo import instructions, reload_summary, run_demo
    from apikeyrouter.observe.logs import configure_logging
    from apikeyrouter.standalone import Started

    configure_logging("warning", "console")
    announced = False

    def announce(started: Started, config_path: Path) -> None:
        nonlocal announced
        announced = True
        for line in instructions(started, config_path):
            click.echo(line)
        sys.stdout.flush()

    def reloaded(report: Mapping[str, Sequence[str]]) -> None:
        click.echo(reload_summary(report))
        sys.stdout.flush()

    _run_until_stopped(
        lambda: run_demo(port, on_started=announce, on_reloaded=reloaded),
        started=lambda: announced,
        host="127.0.0.1",
        port=port,
        hint="try --port 0",
    )


main.add_command(inspect)
main.add_command(keys)
main.add_command(budgets)
main.add_command(policy)
