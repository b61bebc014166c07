"""`apikeyrouter demo`: the simulated provider and the standalone process together, with a few simulated
keys that misbehave on purpose (one tight-rpm, one invalid, one flaky, one healthy, plus a Claude key),
so a newcomer sees failover, breakers and the debug channel with no real key and no network.

The demo writes its config and debug socket to a fresh `apikeyrouter-demo-*` directory (under $TMPDIR)
and removes it on every way out: Ctrl-C, SIGTERM, a second signal, a failed start. The config is read,
at start and on every SIGHUP, with the demo's own environment: the process's, so a key added with
`secret_env` works, without the `APIKEYROUTER_*` overrides (the file decides the host, port, tokens and
socket the demo printed), plus the simulated keys' variables.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from apikeyrouter.config import RouterConfig, load_config
from apikeyrouter.sim import SimServer, parse_sim_config
from apikeyrouter.standalone import Started, run_standalone

__all__ = ["DEMO_ENV", "EU_CLIENT_TOKEN", "demo_config_text", "demo_environment", "reload_summary", "run_demo"]

CLIENT_TOKEN = "sk-client-demo"
EU_CLIENT_TOKEN = "sk-client-demo-eu"  # the `demo-eu` client: a budget of its own and a policy
ADMIN_TOKEN = "admin-demo"

# The simulator accepts any key; these names choose each key's behaviour in SIM_CONFIG.
DEMO_ENV = {
    "DEMO_KEY_TIGHT": "sk-sim-tight",
    "DEMO_KEY_INVALID": "sk-sim-invalid",
    "DEMO_KEY_FLAKY": "sk-sim-flaky",
    "DEMO_KEY_HEALTHY": "sk-sim-healthy",
    "DEMO_KEY_CLAUDE": "sk-ant-sim-claude",
    "DEMO_CLIENT_TOKEN": CLIENT_TOKEN,
    "DEMO_EU_CLIENT_TOKEN": EU_CLIENT_TOKEN,
    "DEMO_ADMIN_TOKEN": ADMIN_TOKEN,
}

SIM_CONFIG = {
    "defaults": {"rpm": 600, "latency_ms": 20, "chunk_delay_ms": 30},  # streams arrive token by token
    "keys": [
        {"key": "sk-sim-tight", "rpm": 3},
        {"key": "sk-sim-invalid", "behavior": "invalid"},
        {"key": "sk-sim-flaky", "error_rate": 0.5, "seed": 42},
    ],
}


def demo_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the demo's config is read with, at start and on every reload (see the module docstring)."""
    environ = os.environ if environ is None else environ
    return {**{k: v for k, v in environ.items() if not k.startswith("APIKEYROUTER_")}, **DEMO_ENV}


def reload_summary(report: Mapping[str, Sequence[str]]) -> str:
    """'config reloaded: keys added: a, b; keys removed: c' from `ApiKeyRouter.apply_config`'s report."""
    changes = [f"{name.replace('_', ' ')}: {', '.join(ids)}" for name, ids in report.items() if ids]
    return "config reloaded: " + ("; ".join(changes) if changes else "nothing changed")


def demo_config_text(sim_url: str, port: int, socket: Path) -> str:
    return f"""# Written by `apikeyrouter demo`: simulated keys in front of the simulated provider at {sim_url}.
[server]
host = "127.0.0.1"
port = {port}
client_tokens_env = "DEMO_CLIENT_TOKEN"
admin_token_env = "DEMO_ADMIN_TOKEN"
grace_period = 5.0

[routing]
objective = "reliability"
max_attempts = 3

[breaker]
failure_threshold = 3
cooldown = 10.0

[[providers]]
id = "openai-sim"
kind = "openai"
base_url = "{sim_url}/v1"
models = ["gpt-4o-mini", "gpt-4o"]

[[providers]]
id = "anthropic-sim"
kind = "anthropic"
base_url = "{sim_url}/v1"
models = ["claude-3-5-haiku-latest", "claude-sonnet-4-5"]

[[keys]]
id = "tight"
provider = "openai-sim"
secret_env = "DEMO_KEY_TIGHT"
metadata = {{ quality = "premium", note = "3 requests per minute at the provider" }}

[[keys]]
id = "invalid"
provider = "openai-sim"
secret_env = "DEMO_KEY_INVALID"

[[keys]]
id = "flaky"
provider = "openai-sim"
secret_env = "DEMO_KEY_FLAKY"

[[keys]]
id = "healthy"
provider = "openai-sim"
secret_env = "DEMO_KEY_HEALTHY"
metadata = {{ region = "eu" }}

[[keys]]
id = "claude"
provider = "anthropic-sim"
secret_env = "DEMO_KEY_CLAUDE"

# A client with a budget of its own, and a policy that keeps it on EU keys (only "healthy" is).
[[clients]]
id = "demo-eu"
token_env = "DEMO_EU_CLIENT_TOKEN"
budget = {{ limit = "0.05", period = "day" }}

[[policies]]
id = "eu-only"
scope = "client:demo-eu"
kind = "eligibility"
description = "demo-eu's requests stay on keys in the EU"
effect = {{ require_key_metadata = {{ region = "eu" }} }}

[debug]
socket = "{socket}"
"""


def instructions(started: Started, config_path: Path) -> list[str]:
    url = started.url
    return [
        f"apikeyrouter demo: the proxy listens on {url} in front of a simulated provider.",
        f"config: {config_path}  (edit it and send SIGHUP to reload)",
        "",
        "Call it with curl:",
        f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {CLIENT_TOKEN}' \\",
        "    -H 'Content-Type: application/json' -i \\",
        '    -d \'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}\'',
        "",
        "or with the openai SDK:",
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{CLIENT_TOKEN}'); "
        "print(c.chat.completions.create(model='gpt-4o-mini', "
        "messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"",
        "",
        "As client demo-eu (its own budget, 0.05 a day; policy eu-only keeps it on key 'healthy'):",
        f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {EU_CLIENT_TOKEN}' \\",
        "    -H 'Content-Type: application/json' -i \\",
        '    -d \'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Bonjour"}]}\'',
        f"  curl -s {url}/budgets -H 'Authorization: Bearer {ADMIN_TOKEN}'      # client:demo-eu spending",
        f"  curl -s {url}/decisions -H 'Authorization: Bearer {ADMIN_TOKEN}'    # 'excluded by policy eu-only'",
        "",
        "Watch the keys live (throttled, invalid, breaker open...):",
        f"  apikeyrouter inspect --socket {started.debug_socket} --watch",
        f"  curl -s {url}/state -H 'Authorization: Bearer {ADMIN_TOKEN}'",
        "",
        "Ctrl-C stops it.",
    ]


async def run_demo(
    port: int,
    *,
    workdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_started: Callable[[Started, Path], None] | None = None,
    on_reloaded: Callable[[Mapping[str, Sequence[str]]], None] | None = None,
    handle_signals: bool = True,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until a signal (or `stop`). Without `workdir` it makes a temporary one, removed on exit."""
    environment = demo_environment(env)
    directory = workdir or Path(tempfile.mkdtemp(prefix="apikeyrouter-demo-"))

    def remove_directory() -> None:
        if workdir is None:
            shutil.rmtree(directory, ignore_errors=True)

    try:
        sim = SimServer(parse_sim_config(SIM_CONFIG))
        async with trio.open_nursery() as nursery:
            sim_port = await nursery.start(sim.serve, "127.0.0.1", 0)
            config_path = directory / "router.toml"
            socket_path = directory / "debug.sock"
            config_path.write_text(demo_config_text(f"http://127.0.0.1:{sim_port}", port, socket_path))
            config: RouterConfig = load_config(config_path, environment)

            def started(s: Started) -> None:
                if on_started is not None:
                    on_started(s, config_path)

            async def standalone(*, task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await run_standalone(
                        config,
                        config_path=config_path,
                        env=environment,
                        on_started=started,
                        on_reloaded=on_reloaded,
                        before_forced_exit=remove_directory,
                        handle_signals=handle_signals,
                        stop=stop,
                        task_status=task_status,
                    )
                finally:
                    nursery.cancel_scope.cancel(reason="the demo has stopped")  # the simulator goes too

            task_status.started(await nursery.start(standalone))
    finally:
        remove_directory()
