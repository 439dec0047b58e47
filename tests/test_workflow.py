"""End to end: the real snakemake runs the tiny configuration, twice, with identical tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_workflow

pytestmark = pytest.mark.e2e

PRODUCTS = [
    "results/synthetic/train.csv",
    "results/synthetic/test.csv",
    "results/synthetic/test_truth.csv",
    "results/synthetic/defects.parquet",
    "results/ingest/images.parquet",
    "results/ingest/boxes.parquet",
    "results/ingest/test.parquet",
    "results/ingest/ledger.csv",
    "results/ingest/summary.json",
    "results/curation/duplicate_groups.parquet",
    "results/curation/images.parquet",
    "results/curation/boxes.parquet",
    "results/curation/folds.parquet",
    "results/curation/fold_balance.csv",
    "results/curation/fold_balance.png",
    "results/curation/ledger.csv",
    "results/curation/summary.json",
    "results/detection/summary.json",
    "results/crops/crops.parquet",
    "results/classification/summary.json",
    "results/ensemble/summary.json",
    "results/submission.csv",
    "results/bundle/MANIFEST.sha256",
    "results/metrics.json",
]


def _json(run: Path, relative: str) -> dict:
    return json.loads((run / relative).read_text())


def test_every_product_is_written(tiny_run):
    missing = [product for product in PRODUCTS if not (tiny_run / product).exists()]
    assert not missing


def test_ingest_accounts_for_every_row(tiny_run):
    summary = _json(tiny_run, "results/ingest/summary.json")
    assert summary["rows_in"] == summary["rows_kept"] + summary["rows_repaired"] + summary["rows_quarantined"]
    train = pd.read_csv(tiny_run / "results/synthetic/train.csv")
    test = pd.read_csv(tiny_run / "results/synthetic/test.csv")
    assert summary["rows_in"] == len(train) + len(test)
    assert summary["images_quarantined"] >= 1  # the injected unreadable file
    assert summary["rows_repaired"] >= 1  # rows of the truncated / greyscale images


def test_curation_finds_the_injected_duplicates_and_repairs_boxes(tiny_run):
    summary = _json(tiny_run, "results/curation/summary.json")
    for key in ("images_in", "images_kept", "duplicate_groups", "boxes_clipped", "boxes_quarantined",
                "fold_max_class_deviation"):
        assert key in summary
    assert summary["dedup_recall"] == 1.0
    assert summary["dedup_precision"] == 1.0
    assert summary["boxes_clipped"] >= 1


def test_folds_cover_every_kept_training_image(tiny_run):
    folds = pd.read_parquet(tiny_run / "results/curation/folds.parquet")
    images = pd.read_parquet(tiny_run / "results/curation/images.parquet")
    kept_train = images[(images["split"] == "train") & images["keep"]]
    assert sorted(folds["name"]) == sorted(kept_train["name"])
    assert set(folds["fold"]) == {0, 1}


def test_headline_metrics(tiny_run):
    metrics = _json(tiny_run, "results/metrics.json")
    assert metrics["ingest"]["rows_in"] > 0
    assert metrics["curation"]["dedup_recall"] == 1.0
    assert metrics["score"] == metrics["submission"]["score"]
    assert {"mean_rescaled_giou", "macro_f1"} <= metrics.keys()
    assert metrics["detection"]["oof_mean_rescaled_giou"] > 0


def test_submission_is_valid_and_scored_with_the_official_metric(tiny_run):
    from leukoflow.metric import score_files, validate_submission

    test = pd.read_csv(tiny_run / "results/synthetic/test.csv")
    submission = pd.read_csv(tiny_run / "results/submission.csv")
    assert validate_submission(test, submission).empty
    assert list(submission["trustii_id"]) == list(test["trustii_id"])
    rescored = score_files(tiny_run / "results/synthetic/test_truth.csv", tiny_run / "results/submission.csv")
    metrics = _json(tiny_run, "results/metrics.json")
    assert abs(metrics["submission"]["score"] - rescored.score) < 1e-6
    # A detector trained for one epoch still places boxes better than chance (GIoU floor of 0.35 is
    # what whole-image boxes give on the tiny set); classes are near chance at this size.
    assert rescored.mean_rescaled_giou > 0.4


def test_finished_run_has_nothing_left_to_do(tiny_run):
    result = run_workflow(tiny_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_noisy_and_label_audit_figures_are_present_and_in_range(tiny_run):
    detection = _json(tiny_run, "results/detection/summary.json")
    rates = ["noisy_precision", "noisy_recall", "label_noise_precision", "label_noise_recall"]
    assert set(rates) | {"noisy_by_kind", "noisy_cap_bound", "crops_below_giou_floor"} <= detection.keys()
    assert all(detection[key] is None or 0.0 <= detection[key] <= 1.0 for key in rates)
    assert isinstance(detection["noisy_cap_bound"], bool) and detection["crops_below_giou_floor"] >= 0
    for figures in detection["noisy_by_kind"].values():
        assert figures["n_true"] >= 0 and all(figures[k] is None or 0 <= figures[k] <= 1 for k in ("precision", "recall"))
