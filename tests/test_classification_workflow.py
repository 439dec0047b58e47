"""Each classifier job reads one model's config block: editing a model re-runs that model alone.

The classifiers run on ground-truth crops of the tiny synthetic set (no detection), one epoch each.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import NO_TRACKING_CONFIG, TINY_CONFIG, run_workflow

pytestmark = pytest.mark.e2e

MODELS = [
    {"name": "mc_a", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1, "batch_size": 16,
     "lr": 0.002, "tta": "none", "validations_per_epoch": 1, "mix_prob": 0.0},
    {"name": "mc_b", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1, "batch_size": 16,
     "lr": 0.002, "tta": "none", "validations_per_epoch": 1, "mix_prob": 0.0},
    # a fine-tuning stage of mc_a: same folds, its own epochs and lr
    {"name": "mc_a_stage2", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1,
     "batch_size": 16, "lr": 0.0005, "tta": "none", "validations_per_epoch": 1, "mix_prob": 0.0,
     "init_from": "mc_a"},
]
TARGETS = [f"results/classification/{model['name']}/fold{fold}/best.pt" for model in MODELS for fold in (0, 1)]


def _overlay(path: Path, models: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"classifiers": {"crop_source": "ground_truth", "models": models}}))
    return path


def _planned(result) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = re.findall(r"rule (\w+):\n(?:.*\n)*?\s+wildcards: ([^\n]+)", result.stdout)
    return sorted(jobs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("classifier_params")
    overlay = _overlay(workdir / "models.yaml", MODELS)
    run_workflow(workdir, "--rerun-incomplete", *TARGETS, overlays=(NO_TRACKING_CONFIG, overlay))
    return workdir


def test_the_fine_tuning_stage_runs_after_the_model_it_starts_from(trained):
    import json

    for fold in (0, 1):
        summary = json.loads((trained / f"results/classification/mc_a_stage2/fold{fold}/summary.json").read_text())
        assert summary["init_from"] == "mc_a"
        first = (trained / f"results/classification/mc_a/fold{fold}/best.pt").stat().st_mtime
        assert (trained / f"results/classification/mc_a_stage2/fold{fold}/best.pt").stat().st_mtime >= first


def test_editing_one_model_reruns_only_that_models_jobs(trained):
    edited = [dict(model, epochs=2) if model["name"] == "mc_b" else model for model in MODELS]
    overlay = _overlay(trained / "edited.yaml", edited)
    result = run_workflow(trained, "--rerun-triggers", "params", "input", "code", "software-env", "mtime", "-n",
                          *TARGETS, configfile=TINY_CONFIG, overlays=(NO_TRACKING_CONFIG, overlay))
    planned = _planned(result)
    assert planned and {rule for rule, _ in planned} == {"train_classifier"}
    assert all("model=mc_b" in wildcards for _, wildcards in planned), planned
    assert len(planned) == 2


def test_editing_a_model_reruns_its_fine_tuning_stage_too(trained):
    edited = [dict(model, lr=0.001) if model["name"] == "mc_a" else model for model in MODELS]
    overlay = _overlay(trained / "edited_a.yaml", edited)
    result = run_workflow(trained, "-n", *TARGETS, configfile=TINY_CONFIG, overlays=(NO_TRACKING_CONFIG, overlay))
    models = {re.search(r"model=([\w.]+)", wildcards).group(1) for _, wildcards in _planned(result)}
    assert models == {"mc_a", "mc_a_stage2"}
