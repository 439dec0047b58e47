"""Throughput per rule of a finished run: jobs, wall seconds (Snakemake benchmarks) and items/s.

usage: python tests/gpu/throughput.py RUN_DIR OUT_TSV
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def items_of(run: Path, rule: str, benchmark: Path) -> int | None:
    """Images or crops a job processed, read from its summary where the rule reports it."""
    if rule == "train_classifier":
        model, fold = benchmark.parent.name, benchmark.stem
        summary = run / "results" / "classification" / model / fold / "summary.json"
        if summary.exists():
            data = json.loads(summary.read_text())
            return int(data["n_train"]) * int(data["epochs"])
    if rule == "predict_classifier":
        summary = run / "results" / "classification" / benchmark.stem / "summary.json"
        if summary.exists():
            return int(json.loads(summary.read_text())["test_rows"])
    return None


def throughput(run: Path) -> pd.DataFrame:
    rows = []
    for benchmark in sorted((run / "benchmarks").rglob("*.tsv")):
        relative = benchmark.relative_to(run / "benchmarks")
        rule = relative.parts[0] if len(relative.parts) > 1 else benchmark.stem
        seconds = float(pd.read_csv(benchmark, sep="\t")["s"].iloc[0])
        rows.append({"rule": rule, "seconds": seconds, "items": items_of(run, rule, benchmark)})
    frame = pd.DataFrame(rows, columns=["rule", "seconds", "items"])
    table = frame.groupby("rule").agg(jobs=("seconds", "size"), seconds=("seconds", "sum"),
                                      items=("items", lambda v: v.dropna().sum() if v.notna().any() else None))
    table["items_per_second"] = (table["items"] / table["seconds"]).round(2)
    return table.reset_index()


def main(argv: list[str]) -> None:
    run, out = Path(argv[1]), Path(argv[2])
    table = throughput(run)
    table.to_csv(out, sep="\t", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv)
