"""Real smears: config/bccd.yaml end to end on ../shared/data/bccd (348 BCCD images), tiny settings.

The overlay tests/configs/bccd_tiny.yaml keeps every stage but trains little (2 folds, detector 1
6 epochs at 128 px, detector 2 one epoch, classifiers 2 epochs at 32 px); data.dir points at the
reference copy. Skipped cleanly where ../shared/data/bccd is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from leukoflow import metric
from tests.conftest import NO_TRACKING_CONFIG, REPO, run_workflow, shared_path
from tests.test_docs_e2e import summary_documentation_problems

pytestmark = pytest.mark.e2e

BCCD_CONFIG = REPO / "config" / "bccd.yaml"
BCCD_TINY = REPO / "tests" / "configs" / "bccd_tiny.yaml"


@pytest.fixture(scope="module")
def bccd_run(module_dir) -> Path:
    data = shared_path("data", "bccd")
    workdir = module_dir / "bccd_run"
    workdir.mkdir()
    overlay = module_dir / "bccd_data.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"dir": str(data)}}))
    run_workflow(workdir, configfile=BCCD_CONFIG, overlays=(overlay, NO_TRACKING_CONFIG, BCCD_TINY))
    return workdir


def _json(run: Path, relative: str) -> dict:
    return json.loads((run / relative).read_text())


def test_detector_beats_the_full_image_baseline_on_real_smears(bccd_run):
    detection = _json(bccd_run, "results/detection/summary.json")
    assert detection["oof_mean_rescaled_giou"] > detection["full_image_baseline_giou"], detection
    per_fold = detection["detectors"]["det1"]["per_fold_mean_rescaled_giou"]
    assert all(value > detection["full_image_baseline_giou"] for value in per_fold.values()), per_fold


def test_hold_out_split_covers_every_annotated_image_once_and_keeps_groups_whole(bccd_run):
    source = pd.read_csv(shared_path("data", "bccd", "train.csv"))
    train = pd.read_parquet(bccd_run / "results/curation/boxes.parquet")
    truth = pd.read_csv(bccd_run / "results/holdout/test_truth.csv")
    assert not set(train["name"]) & set(truth["NAME"])
    assert set(train["name"]) | set(truth["NAME"]) <= set(source["NAME"])
    ingest = _json(bccd_run, "results/ingest/summary.json")
    assert ingest["rows_in"] == len(source) == ingest["rows_kept"] + ingest["rows_repaired"] + ingest["rows_quarantined"]
    curation = _json(bccd_run, "results/curation/summary.json")
    assert curation["duplicate_groups"] >= 1 and curation["train_test_groups"] == 0
    assert curation["boxes_kept"] == len(train) and curation["boxes_held_out"] == len(truth)


def test_submission_is_valid_and_scored_on_the_held_out_smears(bccd_run):
    test = pd.read_csv(bccd_run / "results/holdout/test.csv")
    submission = pd.read_csv(bccd_run / "results/submission.csv")
    problems = metric.validate_submission(test, submission)
    assert problems.empty, problems.to_string()
    metrics = _json(bccd_run, "results/metrics.json")
    result = metric.score_files(bccd_run / "results/holdout/test_truth.csv", bccd_run / "results/submission.csv")
    assert metrics["score"] == pytest.approx(result.score, abs=1e-6)
    assert 0.0 <= result.score <= 1.0
    assert result.mean_rescaled_giou > _json(bccd_run, "results/detection/summary.json")["full_image_baseline_giou"]


def test_stage_pages_document_every_summary_key_of_the_bccd_run(bccd_run):
    assert summary_documentation_problems(bccd_run) == []
