"""The `apikeyrouter` command line (click)."""

from __future__ import annotations

from pathlib import Path

import click

from apikeyrouter.config import bind_allowed, load_config
from apikeyrouter.errors import ConfigError


@click.group()
@click.version_option(package_name="apikeyrouter")
def main() -> None:
    """apikeyrouter: route LLM traffic across many API keys."""


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE as `serve` would (secrets from the environment included), without starting anything."""
    try:
        config = load_config(file)
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
