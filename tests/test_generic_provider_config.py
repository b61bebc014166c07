"""A generic provider configured like examples/router.toml's: its quota headers reach the adapter the right
way round, `serve` runs with it, and `check-config` builds adapters exactly as `serve` does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner

from apikeyrouter.adapters.factory import adapter_from_config, build_adapters
from apikeyrouter.cli import main
from apikeyrouter.config import load_config, parse_config
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.errors import ConfigError
from tests.serve_env import serve_env
from tests.test_config import EXAMPLE, EXAMPLE_ENV

PROVIDER = """
[[providers]]
id = "local"
kind = "generic"
base_url = "http://127.0.0.1:9"
models = ["llama-3.1-8b"]

[providers.generic.quota_headers]
"""
GENERIC = PROVIDER + 'remaining_requests = "x-ratelimit-remaining-requests"\nretry_after = "retry-after"\n'


def test_the_example_generic_provider_reads_its_quota_headers() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    (local,) = [p for p in config.providers if p.id == "local"]
    adapter = adapter_from_config(local)
    headers = httpx.Headers(
        {"x-ratelimit-remaining-requests": "5", "retry-after": "7", "x-ratelimit-reset-tokens": "1m"}
    )
    # reset_tokens keeps its default header; the two set in the file are read from theirs
    assert adapter.signal_from(headers) == QuotaSignal(remaining_requests=5, retry_after_s=7.0, reset_tokens_s=60.0)
    assert set(build_adapters(config)) == {"openai", "anthropic", "local"}


def test_a_generic_provider_with_default_quota_headers_builds() -> None:
    config = parse_config({"providers": [{"id": "g", "kind": "generic", "base_url": "http://127.0.0.1:9"}]}, env={})
    adapter = build_adapters(config)["g"]
    assert adapter.signal_from(httpx.Headers({"x-ratelimit-limit-tokens": "100"})) == QuotaSignal(limit_tokens=100)


async def test_serve_runs_with_a_generic_provider_and_its_quota_headers(tmp_path: Path) -> None:
    async with serve_env(tmp_path, [("k1", "K_1", "")], secrets={"K_1": "sk-sim-1"}, extra=GENERIC) as served:
        await trio.sleep(1.0)  # it used to print where it listens and then die
        assert served.process.returncode is None, served.stderr.decode()[-2000:]
        async with httpx.AsyncClient() as http:
            state = await http.get(f"{served.url}/state", headers=served.admin_headers)
        assert state.status_code == 200


BAD_MAPPINGS = [
    (
        'remaining_requests = "x-left"\nlimit_requests = "x-left"\n',
        "config.providers[0].generic.quota_headers.remaining_requests",
    ),
    ('retry_after = "retry after"\n', "config.providers[0].generic.quota_headers.retry_after"),
    ('reset_tokens = ""\n', "config.providers[0].generic.quota_headers.reset_tokens"),
]


@pytest.mark.parametrize(("mapping", "path"), BAD_MAPPINGS)
def test_check_config_rejects_a_quota_header_mapping_serve_cannot_use(mapping: str, path: str, tmp_path: Path) -> None:
    file = tmp_path / "router.toml"
    file.write_text(PROVIDER + mapping)
    result = CliRunner().invoke(main, ["check-config", str(file)], env={})
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith(f"@ {path}"), line
    with pytest.raises(ConfigError) as info:
        build_adapters(load_config(file, {}))
    assert info.value.errors == (line.removeprefix("error: "),)
