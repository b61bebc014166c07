"""`apikeyrouter policy …`: check a policy file offline, or see what it would change on a running process.

    apikeyrouter policy validate FILE [--config router.toml]
    apikeyrouter policy dry-run FILE [--against decisions.jsonl] [--url URL] [--json]
    apikeyrouter policy list [--url URL] [--json]

FILE is TOML with `[[policies]]` tables (as in the router's config) or JSON (`{"policies": [...]}` or a
list). `validate` checks it the way the router would — unknown fields, kinds, scopes, contradictions and,
with `--config`, the providers, keys, teams, clients and models it names — without applying anything.
`dry-run` asks the running process (its admin API, token in $APIKEYROUTER_ADMIN_TOKEN) to replay its
recent decisions, or those in `--against` (one decision JSON per line, as `GET /decisions` gives them),
through the proposed set against its current key snapshots: nothing is sent upstream, nothing changes.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from apikeyrouter.config import load_config, structure_policies, universe_of
from apikeyrouter.domain.policy import Universe, validate
from apikeyrouter.errors import ConfigError
from apikeyrouter.ops_commands import _fail, _json_option, _print_json, _run, _url_option

__all__ = ["policy"]


def _read_tables(path: str) -> list[Any]:
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {file}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    try:
        data: Any = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        _fail(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'TOML'}: {exc}")
    if isinstance(data, dict):
        data = data.get("policies", [])
    if not isinstance(data, list):
        _fail(f"{file}: expected [[policies]] tables (or a JSON list of policies)")
    return data


def _universe(config_path: str | None) -> Universe:
    if config_path is None:
        return Universe()
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", " "))
    return universe_of(cfg.providers, cfg.keys, cfg.teams, cfg.clients)


@click.group()
def policy() -> None:
    """Validate a policy file, or dry-run it against a running process."""


@policy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", default=None, help="Check the names it uses against this config.")
def validate_file(file: str, config_path: str | None) -> None:
    """Validate FILE without applying it: every error, one per line."""
    parsed, errors, indexes = structure_policies(_read_tables(file))
    for path, message in validate(parsed, _universe(config_path)):
        head, _, rest = path.partition("]")
        errors.append(f"policies[{indexes[int(head.removeprefix('policies['))]}]{rest}: {message}")
    if errors:
        for line in errors:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(1)
    click.echo(f"{file}: {len(parsed)} polic{'y' if len(parsed) == 1 else 'ies'}, valid")


def _decisions(path: str) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(Path(path).read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            _fail(f"{path}:{number}: not a JSON object")
        if not isinstance(d, dict) or not isinstance(d.get("model"), str):
            _fail(f"{path}:{number}: a decision needs a model")
        out.append({k: d[k] for k in ("model", "client", "objective", "request_id") if d.get(k) is not None})
    return out


@policy.command("dry-run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--against", default=None, type=click.Path(dir_okay=False), help="Recorded decisions (JSON lines).")
@_url_option
@_json_option
def dry_run(file: str, against: str | None, url: str, as_json: bool) -> None:
    """What FILE's policies would change on the process at --url (nothing is applied)."""
    tables = _read_tables(file)
    requests = None if against is None else _decisions(against)
    report = _run(url, lambda admin: admin.dry_run_policies(tables, requests))
    if as_json:
        _print_json(report)
        return
    click.echo(
        f"{report['requests']} requests: {report['allowed']} allowed, {report['refused_total']} refused, "
        f"{report['changed_total']} to another key"
    )
    for pid, count in sorted(report["refused_by_policy"].items()):
        click.echo(f"  refused by {pid}: {count}")
    for key, shift in sorted(report["load_shift"].items()):
        click.echo(f"  {key}: {shift:+d}")
    if report.get("cost_delta") is not None:
        click.echo(f"  worst-case cost delta: {report['cost_delta']}")


@policy.command("list")
@_url_option
@_json_option
def list_policies(url: str, as_json: bool) -> None:
    """The live policies of the process at --url."""
    policies = _run(url, lambda admin: admin.policies())
    if as_json:
        _print_json(policies)
        return
    for p in policies:
        click.echo(f"{p['id']}  {p['scope']}  {p['kind']}  {p.get('description', '')}".rstrip())
