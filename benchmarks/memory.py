"""Memory benchmark: resident set size of an idle `apikeyrouter serve` with 3 keys and with 10,000 keys.

    PYTHONPATH=src python benchmarks/memory.py [--keys 3,10000] [--settle 2.0]

Each figure is a child process, `python -m apikeyrouter serve --config <generated router.toml>`, started
the way an operator starts it (supervision tree, proxy, metrics; debug channel off so that runs do not
share a socket), one OpenAI-kind provider pointed at an unused address (nothing is ever sent) and N keys
with inline secrets. Once it prints where it listens, every key is registered (startup registers them
before listening); it then sits idle for `--settle` seconds and its VmRSS is read from /proc. No request
is made: "idle" is what the process holds before its first request. With `[server] preload_tokenizers =
true` (the default) the tokenizer table of the configured model (o200k_base, ~48 MiB) is built before it
listens; each count is measured again with `false`, where the table is built when the model is first routed.

For scale, in the same run: a bare `python -c pass` and `python -c "import apikeyrouter.cli"` (what the
imports alone hold). Goals (issue 10): ≤ 80 MiB with 3 keys, ≤ 250 MiB with 10,000. The last line is
one JSON object: {"rss_mib": {N: MiB}, "rss_mib_lazy": {N: MiB}, "python_mib", "imports_mib", "per_key_kib"}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNUSED_URL = "http://127.0.0.1:9/v1"  # the discard port: never contacted


def router_toml(keys: int, preload: bool = True) -> str:
    entries = "".join(
        f'\n[[keys]]\nid = "k{i}"\nprovider = "openai"\nsecret = "sk-memory-bench-{i:06d}"\n' for i in range(keys)
    )
    return f"""# Written by benchmarks/memory.py.
[server]
host = "127.0.0.1"
port = 0
preload_tokenizers = {"true" if preload else "false"}

[[providers]]
id = "openai"
kind = "openai"
base_url = "{UNUSED_URL}"
models = ["gpt-4o-mini"]
{entries}
[debug]
enabled = false

[logging]
level = "warning"
"""


def child_env() -> dict[str, str]:
    """The children import the package from PYTHONPATH as given (benchmarks/ab.py points it at each
    checkout in turn), else from this checkout."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(ROOT / "src"))
    return env


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_rss(keys: int, work: Path, settle: float, preload: bool = True) -> tuple[float, float]:
    """(RSS MiB when idle, seconds from launch to listening) of a `serve` with `keys` keys."""
    config = work / f"router-{keys}-{preload}.toml"
    config.write_text(router_toml(keys, preload))
    log = work / f"serve-{keys}.log"
    started = time.perf_counter()
    command = [sys.executable, "-m", "apikeyrouter", "serve", "--config", str(config)]
    with log.open("w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env())
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the child exits: then it failed to start
            if re.search(r"listening on http://", line):
                break
        else:
            raise SystemExit(f"serve with {keys} keys did not start:\n{log.read_text()[-2000:]}")
        ready = time.perf_counter() - started
        time.sleep(settle)
        return rss_mib(proc.pid), ready
    finally:
        proc.terminate()
        proc.wait()


def python_rss(code: str) -> float:
    """The RSS (MiB) of a fresh interpreter once it has run `code`."""
    probe = (
        f"{code}\nfrom pathlib import Path\n"
        "print(next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS:')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
    ).stdout
    return int(out.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", default="3,10000", help="comma-separated key counts")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before reading RSS")
    args = parser.parse_args()
    counts = [int(n) for n in args.keys.split(",")]
    rss: dict[str, float] = {}
    lazy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="akr-memory-") as tmp:
        for n in counts:
            mib, ready = serve_rss(n, Path(tmp), args.settle)
            rss[str(n)] = round(mib, 1)
            print(f"serve, {n:>6} keys, idle: {mib:7.1f} MiB RSS (listening after {ready:.1f} s)")
            mib, ready = serve_rss(n, Path(tmp), args.settle, preload=False)
            lazy[str(n)] = round(mib, 1)
            print(f"  the same with preload_tokenizers = false: {mib:7.1f} MiB RSS (listening after {ready:.1f} s)")
    bare = python_rss("pass")
    imports = python_rss("import apikeyrouter.cli")
    print(f"python -c pass: {bare:.1f} MiB; import apikeyrouter.cli: {imports:.1f} MiB")
    result: dict[str, object] = {"rss_mib": rss, "rss_mib_lazy": lazy}
    result |= {"python_mib": round(bare, 1), "imports_mib": round(imports, 1)}
    if len(counts) >= 2:
        lo, hi = min(counts), max(counts)
        result["per_key_kib"] = round((rss[str(hi)] - rss[str(lo)]) * 1024 / (hi - lo), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
