"""Classifier jobs in the workflow: a pseudo-label round added to a finished run, a fine-tuning
stage after the model it starts from, and one model's config block per job (editing a model re-runs
that model alone, plus the stages that start from it).

One module run: a copy of the shared tiny run plus tests/configs/pseudo.yaml, whose third model
(`mc_resnet10t_32_pl1`) is both a pseudo-label round and a fine-tuning stage of `mc_resnet10t_32`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_workflow

pytestmark = pytest.mark.e2e

PSEUDO_CONFIG = REPO / "tests" / "configs" / "pseudo.yaml"
MODELS = yaml.safe_load(PSEUDO_CONFIG.read_text())["classifiers"]["models"]
FIRST, INDEPENDENT, STAGE = "mc_resnet10t_32", "ml_resnet10t_32_bg", "mc_resnet10t_32_pl1"
TRAINED = [f"results/classification/{model['name']}/fold{fold}/best.pt" for model in MODELS for fold in (0, 1)]


@pytest.fixture(scope="module")
def tuned(tiny_run, module_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The shared tiny run plus one pseudo-label round: only the round's jobs run."""
    workdir = module_dir / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)  # copy2 keeps the mtimes Snakemake compares
    # an option first: targets right after the config files would be read as config files
    result = run_workflow(workdir, "--rerun-incomplete", "results/pseudo_labels/summary.json",
                          "results/classification/summary.json", overlays=(PSEUDO_CONFIG,))
    return workdir, result


def _edited(workdir: Path, name: str, model: str, **change) -> Path:
    path = workdir.parent / name
    models = [dict(entry, **change) if entry["name"] == model else entry for entry in MODELS]
    path.write_text(yaml.safe_dump({"classifiers": {"models": models}}))
    return path


def _planned_models(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, model) of every job of a dry run whose wildcards name a model."""
    jobs = re.findall(r"rule (\w+):\n(?:.*\n)*?\s+wildcards: ([^\n]+)", result.stdout)
    return sorted((rule, found.group(1)) for rule, wildcards in jobs if (found := re.search(r"model=([\w.]+)", wildcards)))


def test_a_tiny_run_with_one_round_writes_the_pseudo_label_summary(tuned):
    workdir, result = tuned
    assert "rule train_detector" not in result.stdout + result.stderr
    summary = json.loads((workdir / "results" / "pseudo_labels" / "summary.json").read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["pseudo_labels"] > 0 and summary["rounds"][1]["models"] == [STAGE]
    assert all(0.0 <= entry["oof_macro_f1"] <= 1.0 for entry in summary["rounds"])
    for fold in (0, 1):
        fold_summary = json.loads((workdir / f"results/classification/{STAGE}/fold{fold}/summary.json").read_text())
        assert fold_summary["pseudo_labels"] == summary["rounds"][1]["per_fold"][str(fold)]


def test_the_fine_tuning_stage_runs_after_the_model_it_starts_from(tuned):
    workdir, _ = tuned
    for fold in (0, 1):
        summary = json.loads((workdir / f"results/classification/{STAGE}/fold{fold}/summary.json").read_text())
        assert summary["init_from"] == FIRST
        first = (workdir / f"results/classification/{FIRST}/fold{fold}/best.pt").stat().st_mtime
        assert (workdir / f"results/classification/{STAGE}/fold{fold}/best.pt").stat().st_mtime >= first


def test_editing_one_model_reruns_only_that_models_jobs(tuned):
    workdir, _ = tuned
    overlay = _edited(workdir, "edited.yaml", INDEPENDENT, epochs=3)
    result = run_workflow(workdir, "--rerun-triggers", "params", "input", "code", "software-env", "mtime", "-n",
                          *TRAINED, overlays=(PSEUDO_CONFIG, overlay))
    assert _planned_models(result) == [("train_classifier", INDEPENDENT)] * 2, result.stdout[-3000:]


def test_editing_a_model_reruns_its_fine_tuning_stage_too(tuned):
    workdir, _ = tuned
    overlay = _edited(workdir, "edited_first.yaml", FIRST, lr=0.001)
    result = run_workflow(workdir, "-n", *TRAINED, overlays=(PSEUDO_CONFIG, overlay))
    planned = _planned_models(result)
    assert {model for _, model in planned} == {FIRST, STAGE}, planned
    assert planned.count(("train_classifier", FIRST)) == planned.count(("train_classifier", STAGE)) == 2
