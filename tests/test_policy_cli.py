"""`apikeyrouter policy validate|dry-run|list`: a policy file checked offline, or replayed on a running process."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from apikeyrouter.cli import main
from tests.routing_env import chat
from tests.test_ops_cli import ops_env, outputs, parsed

POLICIES = """
[[policies]]
id = "no-oa-1"
scope = "global"
kind = "eligibility"
effect = { deny_keys = ["oa-1"] }
"""
CONFIG = """
[[providers]]
id = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]
"""


def test_validate_reports_every_error_with_its_policy_and_field(tmp_path: Path) -> None:
    file = tmp_path / "policies.toml"
    file.write_text(
        POLICIES
        + '\n[[policies]]\nid = "typo"\nscope = "global"\nkind = "routing"\n'
        + 'match = { models = ["gpt-5o"] }\neffect = { objective = "cost", colour = "red" }\n'
        + '\n[[policies]]\nid = "odd"\nscope = "galaxy"\nkind = "routing"\nmatch = { models = ["gpt-5o"] }\n'
        + 'effect = { objective = "cost" }\n'
    )
    config = tmp_path / "router.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(main, ["policy", "validate", str(file), "--config", str(config)])
    assert result.exit_code == 1, outputs(result)
    assert result.stderr.splitlines() == [
        "error: policies[1].effect: extra fields found (colour)",
        "error: policies[0].effect.deny_keys: unknown key 'oa-1'",
        "error: policies[2].scope: invalid scope 'galaxy': "
        "default, global, provider:<id>, team:<id>, client:<id> or request",
        "error: policies[2].match.models: unknown model 'gpt-5o'",
    ]
    file.write_text(POLICIES)
    ok = CliRunner().invoke(main, ["policy", "validate", str(file)])
    assert ok.exit_code == 0 and "1 policy, valid" in ok.stdout


async def test_dry_run_replays_recorded_decisions_on_the_running_process(tmp_path: Path) -> None:
    file = tmp_path / "policies.toml"
    file.write_text(POLICIES)
    async with ops_env() as ops:
        for i in range(3):
            await ops.router.route(chat(f"n{i}"), client="acme")
        recorded = tmp_path / "decisions.jsonl"
        recorded.write_text("\n".join(json.dumps(d) for d in ops.router.decisions(10)) + "\n")

        report = parsed(await ops.run("policy", "dry-run", str(file), "--against", str(recorded), "--json"))
        assert report["requests"] == 3 and report["refused_by_policy"] == {"no-oa-1": 3}
        assert report["load_shift"] == {"oa-1": -3}
        text = await ops.run("policy", "dry-run", str(file))
        assert text.exit_code == 0 and "3 refused" in text.stdout and "refused by no-oa-1: 3" in text.stdout
        assert parsed(await ops.run("policy", "list", "--json")) == []  # nothing was applied
