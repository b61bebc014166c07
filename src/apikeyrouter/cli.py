"""The `apikeyrouter` command line (click)."""

from __future__ import annotations

import click

from apikeyrouter.debug.commands import inspect


@click.group()
@click.version_option(package_name="apikeyrouter")
def main() -> None:
    """apikeyrouter: route LLM traffic across many API keys."""


main.add_command(inspect)
