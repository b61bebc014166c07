"""The `apikeyrouter` command line (click)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from apikeyrouter.errors import ConfigError


@click.group()
@click.version_option(package_name="apikeyrouter")
def main() -> None:
    """apikeyrouter: route LLM traffic across many API keys."""


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
