"""The `apikeyrouter` command line (click)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from apikeyrouter.config import bind_allowed, load_config
from apikeyrouter.debug.commands import inspect
from apikeyrouter.errors import ConfigError


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

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve, host, port)
            # A line scripts (and benchmarks/sim.py) can wait for and parse.
            click.echo(f"apikeyrouter sim listening on http://{host}:{bound}", err=False)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="router.toml"
)
def serve(config_path: Path) -> None:
    """Run the supervision tree and the OpenAI-compatible proxy described by a config file."""
    import trio

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

    def announce(started: Started) -> None:
        for line in describe(started, config):
            click.echo(line)
        sys.stdout.flush()

    try:
        trio.run(lambda: run_standalone(config, config_path=config_path, on_started=announce))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed (still starting)
        raise SystemExit(130) from None
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Proxy port.")
def demo(port: int) -> None:
    """Start the simulated provider and the proxy with simulated keys (tight, invalid, flaky, healthy)."""
    import trio

    from apikeyrouter.demo import instructions, run_demo
    from apikeyrouter.observe.logs import configure_logging
    from apikeyrouter.standalone import Started

    configure_logging("warning", "console")

    def announce(started: Started, config_path: Path) -> None:
        for line in instructions(started, config_path):
            click.echo(line)
        sys.stdout.flush()

    try:
        trio.run(lambda: run_demo(port, on_started=announce))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed (still starting)
        raise SystemExit(130) from None
    except OSError as exc:
        click.echo(f"error: {exc} (is port {port} taken? try --port 0)", err=True)
        raise SystemExit(1) from None


main.add_command(inspect)
