"""`apikeyrouter keys …` and `apikeyrouter budgets`: manage a running process through its admin API.

    apikeyrouter keys list [--wide] [--json]
    apikeyrouter keys add --provider P [--id ID] [--rpm N] [--tpm N] [--max-in-flight N]
                          [--model M ...] [--metadata k=v ...] [--secret-env VAR] [--json]   (secret on stdin)
    apikeyrouter keys disable|enable ID [--reason TEXT] [--json]
    apikeyrouter keys rotate ID [--secret-env VAR] [--json]                                  (secret on stdin)
    apikeyrouter keys revoke ID [--reason TEXT] [--json]
    apikeyrouter budgets [--json]

Where: `--url`, else `$APIKEYROUTER_URL`, else http://127.0.0.1:8080. The admin token is read from
`$APIKEYROUTER_ADMIN_TOKEN` only, and key material from stdin or the variable `--secret-env` names: a
command-line value would show in `ps` and in shell history. Tables for people, `--json` (the API's own
JSON) for scripts. Every failure is one line on stderr, `error: …`, and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from apikeyrouter.admin_client import DEFAULT_URL, TOKEN_ENV, URL_ENV, AdminClient, AdminError
from apikeyrouter.debug import render

__all__ = ["budgets", "keys"]

_url_option = click.option(
    "--url",
    envvar=URL_ENV,
    default=DEFAULT_URL,
    show_default=True,
    help=f"The process's HTTP address (also ${URL_ENV}).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(url: str, call: Callable[[AdminClient], Any]) -> Any:
    """`call` on a client of `url` with the admin token from the environment; an AdminError is one line."""
    try:
        with AdminClient(url, os.environ.get(TOKEN_ENV) or None) as admin:
            return call(admin)
    except AdminError as exc:
        _fail(str(exc))


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def _show_keys(entries: Sequence[dict[str, Any]], as_json: bool, *, wide: bool = False) -> None:
    if as_json:
        _print_json(list(entries))
        return
    if not entries:
        click.echo("no keys")
        return
    table = render.keys_table(entries, wide=wide)
    console = _console()
    if wide:  # as wide as the table needs, however narrow the terminal (as `inspect --wide`)
        console.width = max(console.width, render.natural_width(table))
    console.print(table)


def _read_secret(secret_env: str | None) -> str:
    """The key material: from the variable `secret_env` names, else stdin (typed unseen on a terminal)."""
    if secret_env is not None:
        value = os.environ.get(secret_env)
        if not value:
            _fail(f"the environment variable {secret_env} (--secret-env) is not set or empty")
        return value.strip()
    if sys.stdin.isatty():
        value = str(click.prompt("secret", hide_input=True, err=True)).strip()
    else:
        value = sys.stdin.read().strip()
    if not value:
        _fail("no secret: pipe it on stdin or name an environment variable with --secret-env")
    return value


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"--metadata takes key=value, got {pair!r}")
        out[name] = value
    return out


@click.group()
def keys() -> None:
    """List, add, disable, enable, rotate and revoke the keys of a running process (its admin API)."""


@keys.command("list")
@_url_option
@_json_option
@click.option("--wide", is_flag=True, help="Every column, unwrapped (the table as `inspect --wide` prints it).")
def list_keys(url: str, as_json: bool, wide: bool) -> None:
    """Every key: lifecycle, capacity, breaker, in flight, success, latency, spend (never its secret)."""
    _show_keys(_run(url, lambda admin: admin.keys()), as_json, wide=wide)


@keys.command("add")
@_url_option
@_json_option
@click.option("--provider", required=True, help="The provider the key belongs to.")
@click.option("--id", "key_id", default=None, help="The key's id (generated when absent).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens per minute.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None, help="Concurrent requests at most.")
@click.option("--model", "models", multiple=True, help="A model the key serves (repeatable).")
@click.option("--metadata", "metadata", multiple=True, metavar="K=V", help="A metadata entry (repeatable).")
@click.option("--secret-env", default=None, metavar="VAR", help="Read the secret from this variable, not stdin.")
def add_key(
    url: str,
    as_json: bool,
    provider: str,
    key_id: str | None,
    rpm: int | None,
    tpm: int | None,
    max_in_flight: int | None,
    models: tuple[str, ...],
    metadata: tuple[str, ...],
    secret_env: str | None,
) -> None:
    """Register a key; its secret comes from stdin or from --secret-env, never from a flag."""
    extra = _metadata(metadata)
    limits = {n: v for n, v in (("rpm", rpm), ("tpm", tpm)) if v is not None}
    secret = _read_secret(secret_env)
    added = _run(
        url,
        lambda admin: admin.add_key(
            secret, provider, key_id=key_id, limits=limits, models=models, metadata=extra, max_in_flight=max_in_flight
        ),
    )
    if as_json:
        _print_json(added)
    else:
        click.echo(f"added key {added['id']} ({added['provider']}, {added['fingerprint']})")


def _state_command(name: str, state: str, done: str) -> click.Command:
    @click.command(name, help=f"Set key ID {state} (audited with --reason).")
    @click.argument("key_id", metavar="ID")
    @click.option("--reason", default=None, help="Why (kept in the key's transitions).")
    @_url_option
    @_json_option
    def command(key_id: str, reason: str | None, url: str, as_json: bool) -> None:
        entry = _run(url, lambda admin: admin.set_state(key_id, state, reason))
        _done(entry, as_json, f"{done} key {key_id}")

    return command


def _done(entry: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        _print_json(entry)
        return
    lifecycle = entry.get("lifecycle")
    click.echo(f"{line}" + (f": {lifecycle}" if lifecycle else ""))


keys.add_command(_state_command("disable", "disabled", "disabled"))
keys.add_command(_state_command("enable", "active", "enabled"))


@keys.command("rotate")
@click.argument("key_id", metavar="ID")
@click.option("--secret-env", default=None, metavar="VAR", help="Read the new secret from this variable, not stdin.")
@_url_option
@_json_option
def rotate_key(key_id: str, secret_env: str | None, url: str, as_json: bool) -> None:
    """Swap key ID's secret (from stdin or --secret-env), keeping its id and history."""
    secret = _read_secret(secret_env)
    entry = _run(url, lambda admin: admin.rotate(key_id, secret))
    if as_json:
        _print_json(entry)
    else:
        click.echo(f"rotated key {key_id}: fingerprint now {entry.get('fingerprint', '?')}")


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@click.option("--reason", default=None, help="Why (kept in the key's transitions).")
@_url_option
@_json_option
def revoke_key(key_id: str, reason: str | None, url: str, as_json: bool) -> None:
    """Revoke key ID for good (it keeps its id and history)."""
    entry = _run(url, lambda admin: admin.revoke(key_id, reason))
    _done(entry, as_json, f"revoked key {key_id}")


@click.command("budgets")
@_url_option
@_json_option
def budgets(url: str, as_json: bool) -> None:
    """Every hard budget of a running process: limit, spent, reserved and what is left."""
    rows = _run(url, lambda admin: admin.budgets())
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no budgets configured")
        return
    table = Table("budget", "limit", "spent", "reserved", "left")
    for row in rows:
        table.add_row(row["id"], row["limit"], row["spent"], row["reserved"], _left(row))
    _console().print(table)


def _left(row: dict[str, Any]) -> str:
    try:
        return str(Decimal(row["limit"]) - Decimal(row["spent"]) - Decimal(row["reserved"]))
    except (InvalidOperation, KeyError, TypeError):
        return "?"
