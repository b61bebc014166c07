"""`serve` builds the tokenizer tables its models need before it listens: tiktoken builds one holding the
GIL (over 1 s on a loaded machine), so doing it in the first request froze the event loop and pushed that
request past its deadline even from a worker thread."""

from __future__ import annotations

import subprocess
import sys

from tests.serve_env import ROOT

SCRIPT = """
import trio
from apikeyrouter.adapters.tokens import loaded_encodings
from apikeyrouter.config import parse_config
from apikeyrouter.standalone import run_standalone

models = {models!r}
config = parse_config(
    {{
        "server": {{"host": "127.0.0.1", "port": 0, "preload_tokenizers": {preload!r}}},
        "providers": [{{"id": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": models}}],
        "keys": [{{"id": "k", "provider": "p", "secret": "sk-x"}}],
        "debug": {{"enabled": False}},
    }},
    {{}},
    "<test>",
)

async def main():
    stop = trio.Event()
    seen = []

    def started(_):
        seen.append(sorted(loaded_encodings()))
        stop.set()

    await run_standalone(config, on_started=started, handle_signals=False, stop=stop)
    print(seen[0])

trio.run(main)
"""


def encodings_loaded_when_listening(models: list[str], *, preload: bool = True) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(models=models, preload=preload)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src")},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_serve_has_the_tokenizer_its_models_need_before_it_listens() -> None:
    assert encodings_loaded_when_listening(["gpt-4o-mini"]) == "['o200k_base']"  # not cl100k: ~27 MiB unneeded
    assert encodings_loaded_when_listening(["gpt-4", "claude-3-5-haiku"]) == "['cl100k_base']"
    assert encodings_loaded_when_listening([]) == "['cl100k_base', 'o200k_base']"  # any model: both


def test_without_preloading_serve_listens_with_no_tokenizer_built() -> None:
    assert encodings_loaded_when_listening(["gpt-4o-mini"], preload=False) == "[]"  # built on first use
