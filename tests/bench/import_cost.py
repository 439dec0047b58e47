"""Import cost of every rule script's two import lines, and which heavy packages they load.

Each rule runs in a fresh interpreter with `-X importtime`; the figure is the sum of the
top-level cumulative import times (what a job pays before its entry starts), best of `--repeat`.

    PYTHONPATH=workflow python tests/bench/import_cost.py [--repeat 2] [--rules ingest fit_oof]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"
HEAVY = ("torch", "ultralytics", "timm", "mlflow", "optuna", "matplotlib", "sklearn")
PROBE = "import sys; print(' '.join(m for m in {heavy!r} if m in sys.modules))"


def import_lines(rule: str) -> str:
    """The script's lines before `run_rule(...)`: the entry and `run_rule` imports."""
    lines = (SCRIPTS / f"{rule}.py").read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith(("from ", "import ")))


def measure(rule: str) -> tuple[float, str]:
    """(seconds of imports, heavy packages loaded) of one fresh interpreter."""
    code = import_lines(rule) + "\n" + PROBE.format(heavy=HEAVY)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    return top_level_seconds(done.stderr), done.stdout.strip()


def top_level_seconds(importtime_log: str) -> float:
    """Sum of the cumulative times (µs) of the imports made at top level (no indentation)."""
    total = 0
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name[1:].startswith(" "):
            total += int(cumulative)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rules", nargs="*", default=sorted(p.stem for p in SCRIPTS.glob("*.py")))
    args = parser.parse_args()
    print(f"{'rule':28s} {'seconds':>8s}  heavy packages loaded")
    for rule in args.rules:
        runs = [measure(rule) for _ in range(args.repeat)]
        seconds = min(s for s, _ in runs)
        print(f"{rule:28s} {seconds:8.2f}  {runs[0][1] or '-'}", flush=True)


if __name__ == "__main__":
    main()
