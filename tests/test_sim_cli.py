"""`apikeyrouter sim` refuses a bad sim.toml with a message naming the field and its place."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from apikeyrouter.adapters import AnthropicAdapter, GenericHTTPAdapter, OpenAIAdapter, ProviderAdapter
from apikeyrouter.cli import main


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('[defaults]\nrpm = 5\n[[keys]]\nkey = "a"\nrmp = 3\n')
    result = CliRunner().invoke(main, ["sim", "--port", "0", "--config", str(path)])
    assert result.exit_code == 2
    assert "extra fields found (rmp) @ sim.toml.keys[0]" in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", "--port", "0", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_adapters_satisfy_the_protocol_at_runtime() -> None:
    for adapter in (OpenAIAdapter(), AnthropicAdapter(), GenericHTTPAdapter(url="http://x")):
        assert isinstance(adapter, ProviderAdapter)
