"""tests/gpu/smoke.sh runs every training and inference rule and writes throughput per rule; here on
CPU at toy size (tests/gpu/toy.yaml), so the script is known to work before a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, SNAKEMAKE

pytestmark = pytest.mark.e2e


def test_smoke_script_runs_every_rule_at_toy_size_and_reports_throughput(tmp_path):
    env = {**os.environ, "SNAKEMAKE": str(SNAKEMAKE), "PYTHON": sys.executable, "CORES": "2"}
    result = subprocess.run([str(REPO / "tests" / "gpu" / "smoke.sh"), str(tmp_path), str(REPO / "tests" / "gpu" / "toy.yaml")],
                            capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "throughput.tsv", sep="\t")
    rules = set(table["rule"])
    assert {"train_detector", "predict_oof", "predict_test_boxes", "train_classifier", "predict_classifier",
            "search_ensemble_weights", "build_submission"} <= rules
    trained = table.set_index("rule").loc["train_classifier"]
    assert trained["jobs"] == 3 * 2 and trained["items_per_second"] > 0
    assert (tmp_path / "run" / "results" / "pseudo_labels" / "round1.parquet").exists()
