"""A config reload (SIGHUP): bring the running router to a new `RouterConfig`.

Providers and keys are added, removed or changed at run time. Requests in flight are not dropped: a
removed key's calls finish upstream (their settlement is simply ignored). A changed provider is replaced
whole, its keys re-registered under the new adapter; a re-registered key restores its stored record.
Every adapter of the new config is built before anything changes: a config that cannot be built (a
`ConfigError` naming the field) is refused whole, and the router keeps running the old one.
"""

from __future__ import annotations

import structlog
import trio

from apikeyrouter.actors.budget import client_templates, month_specs, rate_limits
from apikeyrouter.adapters.base import ProviderAdapter
from apikeyrouter.adapters.factory import build_adapters
from apikeyrouter.config import RouterConfig
from apikeyrouter.errors import InvalidRequest
from apikeyrouter.messages.budget import SetBudgets
from apikeyrouter.observe import ConfigReloaded
from apikeyrouter.runtime.deps import parse_objective
from apikeyrouter.runtime.registry import Registry

__all__ = ["apply_config"]

log = structlog.get_logger("apikeyrouter.runtime")


async def apply_config(reg: Registry, new: RouterConfig) -> dict[str, list[str]]:
    """Returns what changed, by id: keys_added/removed/changed, providers_added/removed/changed (and
    `refused`: steps a key's state did not allow, e.g. new material for a revoked key)."""
    from apikeyrouter.config import diff_keys, diff_providers

    reg.check("apply_config")
    built = build_adapters(new)  # raises ConfigError before anything has changed
    parse_objective(new.routing.objective)  # likewise (InvalidRequest), before apply_routing needs it
    old = reg.config
    keys = diff_keys(old, new)
    providers = diff_providers(old, new)
    report: dict[str, list[str]] = {
        "keys_added": [],
        "keys_removed": [],
        "keys_changed": [],
        "providers_added": [],
        "providers_removed": [],
        "providers_changed": [],
    }
    changed_providers = {p.id for p in providers.changed}
    removed_providers = {p.id for p in providers.removed} | changed_providers
    for kcfg in keys.removed:
        await reg.remove_key(kcfg.id)
        report["keys_removed"].append(kcfg.id)
    moved = [k for k in old.keys if k.provider in removed_providers and k.id in reg.key_provider]
    for kcfg in moved:
        await reg.remove_key(kcfg.id)
    for pid in removed_providers:
        await reg.remove_provider(pid)
        report["providers_removed" if pid not in changed_providers else "providers_changed"].append(pid)
    reg.apply_routing(new)
    if new.policies != reg.policy_book.policies:  # a reload sets the file's policies (validated on load)
        reg.policy_book.replace(new.policies, who="config reload", now=trio.current_time())
    specs = [*month_specs(new), *reg.api_budgets.values()]
    templates, limits = client_templates(new), rate_limits(new)
    if specs or templates or limits or reg.budgets_enabled:
        reg.budget_specs, reg.budget_templates, reg.rate_limits = specs, templates, limits
        await reg.budget_ref().tell(SetBudgets(tuple(specs), tuple(templates), tuple(limits)))
    await _add_providers(reg, new, built, changed_providers, report)
    await _add_keys(reg, new, {k.id for k in keys.changed}, {k.id for k in moved}, report)
    reg.events.publish(ConfigReloaded(trio.current_time(), **report))
    log.info("config_reloaded", **{k: v for k, v in report.items() if v})
    return report


async def _add_providers(
    reg: Registry,
    new: RouterConfig,
    built: dict[str, ProviderAdapter],
    changed: set[str],
    report: dict[str, list[str]],
) -> None:
    for pcfg in new.providers:
        if pcfg.id not in reg.adapters:
            await reg.register_provider(pcfg.id, built[pcfg.id])
            if pcfg.id not in changed:
                report["providers_added"].append(pcfg.id)


async def _add_keys(
    reg: Registry, new: RouterConfig, changed: set[str], moved: set[str], report: dict[str, list[str]]
) -> None:
    for kcfg in new.keys:
        if kcfg.id in changed and kcfg.id in reg.key_provider:
            await reg.remove_key(kcfg.id)
        if kcfg.id in reg.key_provider:
            continue  # unchanged
        if kcfg.id in changed:
            report["keys_changed"].append(kcfg.id)
        elif kcfg.id not in moved:
            report["keys_added"].append(kcfg.id)
        # A re-registered key restores its stored record (lifecycle, windows, breaker).
        await reg.register(kcfg.id, kcfg.secret, kcfg.provider, reg.key_settings(kcfg))
        try:
            if reg.stored_secret_differs(kcfg.id, kcfg.secret):
                await reg.operate(kcfg.id, "rotate", "key material from reloaded config", kcfg.secret)
            if not kcfg.enabled:
                await reg.update_key_state(kcfg.id, "disabled", reason="disabled in config")
        except InvalidRequest as exc:
            # e.g. new material for a key an operator revoked: revoked stays revoked, the reload goes on.
            report.setdefault("refused", []).append(f"{kcfg.id}: {exc}")
            log.warning("reload_step_refused", key=kcfg.id, reason=str(exc))
