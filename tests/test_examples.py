"""Every script in examples/ runs to completion (they are documentation that must not rot)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_example_runs(script: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(script)], env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.strip(), "an example should show what it did"
