"""A/B: run one benchmark script in two checkouts, alternating, and compare their figures in one run.

    python benchmarks/ab.py --base /path/to/baseline-checkout [--rounds 3] -- benchmarks/routing.py --quick

A change's "before" is a checkout of the commit it starts from (`git worktree add /tmp/base <commit>`). Each
round runs the script once in the baseline tree and once in this one, in alternating order, so machine noise
(this is a 2-core machine others share) lands on both alike. Every benchmark here ends with one JSON line;
this script reads that line from each run, flattens nested figures to dotted names, and prints, for every
figure both sides report, the median of each side and the ratio this / base. The last line is one JSON
object: {"rounds", "figures": {name: {"base", "this", "ratio"}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, int | float):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {}


def run_once(tree: Path, script: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run(
        [sys.executable, *script], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(script)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not last:
        raise SystemExit(f"{tree}: {' '.join(script)} printed no JSON line")
    return flatten(json.loads(last[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="checkout of the baseline commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- benchmarks/X.py [its options]")
    args = parser.parse_args()
    script = [a for a in args.script if a != "--"]
    if not script:
        parser.error("name the benchmark script after --")
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    trees = {"base": args.base.resolve(), "this": HERE}
    for i in range(args.rounds):
        order = ("base", "this") if i % 2 == 0 else ("this", "base")
        for side in order:
            runs[side].append(run_once(trees[side], script))
            print(f"round {i + 1}/{args.rounds}: {side} done", file=sys.stderr, flush=True)
    names = sorted(set.intersection(*(set(r) for side in runs.values() for r in side)))
    figures: dict[str, dict[str, float]] = {}
    print(f"{'figure':50} {'base':>12} {'this':>12} {'this/base':>10}")
    for name in names:
        base = statistics.median(r[name] for r in runs["base"])
        this = statistics.median(r[name] for r in runs["this"])
        ratio = this / base if base else float("nan")
        figures[name] = {"base": base, "this": this, "ratio": round(ratio, 3)}
        print(f"{name:50} {base:12.2f} {this:12.2f} {ratio:10.3f}")
    print(json.dumps({"rounds": args.rounds, "script": script, "figures": figures}))


if __name__ == "__main__":
    main()
