"""Box repair edge cases, and the curation summary's accounting and defect scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukoflow.curation.box_repair import repair_boxes
from leukoflow.curation.summary import curate, dedup_scores, summarize, summarize_from_files
from leukoflow.curation.duplicates import deduplicate
from leukoflow.curation.folds import DEFAULT_BINS
from leukoflow.tables import CURATED_BOXES, DEFECTS, INGEST_BOXES, INGEST_IMAGES, LEDGER, validate, write_table
from tests.test_duplicates import BASE, FAR, flip, ingest_boxes, ingest_images

WIDTH, HEIGHT = 360, 363


def curated_images(images: pd.DataFrame, boxes: pd.DataFrame, **options) -> pd.DataFrame:
    _, curated, _, _ = deduplicate(images, boxes, **{"max_distance": 2, "conflict_policy": "keep_survivor", **options})
    return curated


def edge_case_tables():
    images = ingest_images([
        ("a.jpg", "train", BASE, WIDTH, HEIGHT), ("dup.jpg", "train", BASE, WIDTH, HEIGHT),
        ("q.jpg", "train", 0, 0, 0, "quarantined"), ("t.jpg", "test", FAR, WIDTH, HEIGHT),
    ])
    boxes = ingest_boxes([
        ("a.jpg", "LY", 10, 20, 200, 220),                 # 0 inside: kept as given
        ("a.jpg", "LY", -5, -3.5, 100, 120),                # 1 negative: clipped x1, y1
        ("a.jpg", "PNN", 300, 300, 400, 500),               # 2 beyond: clipped to w-1 / h-1
        ("a.jpg", "MO", 200, 50, 100, 150),                 # 3 inverted x
        ("a.jpg", "MO", 400, 10, 450, 60),                  # 4 wholly right of the image
        ("a.jpg", "MO", 50, 60, 50, 100),                   # 5 zero width
        ("dup.jpg", "LY", 10, 20, 200, 220),                # 6 image removed as a duplicate
        ("q.jpg", "LY", 10, 20, 200, 220),                  # 7 image quarantined by ingest
        ("nowhere.jpg", "LY", 10, 20, 200, 220),            # 8 image unknown
        ("a.jpg", "XX", 10, 20, 200, 220, "quarantined"),   # 9 box quarantined by ingest
        ("a.jpg", "LY", np.nan, 20, 200, 220),              # 10 not finite
        ("a.jpg", "LY", 0, 0, WIDTH - 1, HEIGHT - 1),       # 11 full image: kept, not clipped
    ])
    return images, boxes


def test_clipping_edge_cases():
    images, boxes = edge_case_tables()
    curated, ledger, summary = repair_boxes(boxes, curated_images(images, boxes))
    validate(curated, CURATED_BOXES)
    validate(ledger, LEDGER)
    kept = curated.set_index("row")
    assert list(kept.index) == [0, 1, 2, 11]
    assert tuple(kept.loc[1, ["x1", "y1", "x2", "y2"]]) == (0.0, 0.0, 100.0, 120.0)
    assert tuple(kept.loc[2, ["x1", "y1", "x2", "y2"]]) == (300.0, 300.0, WIDTH - 1, HEIGHT - 1)
    assert list(kept["clipped"]) == [False, True, True, False]
    reasons = dict(zip(ledger["row"], ledger["reason"]))
    assert reasons == {1: "clipped_to_image", 2: "clipped_to_image", 3: "inverted_box", 4: "degenerate_after_clip",
                       5: "degenerate_after_clip", 6: "image_removed_duplicate", 7: "image_unusable",
                       8: "image_unusable", 10: "non_finite_coordinate"}
    assert dict(zip(ledger["row"], ledger["field"]))[1] == "x1;y1"
    assert dict(zip(ledger["row"], ledger["action"]))[6] == "removed"
    assert summary["boxes_quarantined_upstream"] == 1
    assert (summary["boxes_in"], summary["boxes_kept"], summary["boxes_clipped"]) == (11, 4, 2)
    assert (summary["boxes_quarantined"], summary["boxes_removed_with_image"]) == (6, 1)
    assert summary["images_with_clipped_boxes"] == 1
    parts = ("boxes_kept", "boxes_quarantined", "boxes_removed_with_image")
    assert summary["boxes_in"] == sum(summary[part] for part in parts)


def test_inverted_y_is_quarantined_even_when_clipping_would_not_notice():
    images = ingest_images([("a.jpg", "train", BASE)])
    boxes = ingest_boxes([("a.jpg", "LY", 10, 200, 100, 20)])
    curated, ledger, _ = repair_boxes(boxes, curated_images(images, boxes))
    assert curated.empty and list(ledger["reason"]) == ["inverted_box"]


def test_conflict_dropped_images_take_their_boxes_along():
    images = ingest_images([("a.jpg", "train", BASE), ("b.jpg", "train", BASE)])
    boxes = ingest_boxes([("a.jpg", "LY"), ("b.jpg", "PNN")])
    curated, ledger, summary = repair_boxes(boxes, curated_images(images, boxes, conflict_policy="drop_group"))
    assert curated.empty and summary["boxes_removed_with_image"] == 2
    assert set(ledger["reason"]) == {"image_removed_conflicting_duplicate"}


# ---------------------------------------------------------------- curation summary

def write_ingest(tmp_path, images, boxes):
    write_table(images, tmp_path / "images.parquet", INGEST_IMAGES)
    write_table(boxes, tmp_path / "boxes.parquet", INGEST_BOXES)
    return tmp_path / "images.parquet", tmp_path / "boxes.parquet"


def synthetic_dataset(n: int = 60, seed: int = 3):
    """Random unique images plus planted copies, and the defects table describing them."""
    rng = np.random.default_rng(seed)
    specs, boxes, defects = [], [], []
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    for k in range(n):
        name = f"img{k:03d}.jpg"
        specs.append((name, "train" if k % 5 else "test", int(hashes[k]), WIDTH, HEIGHT))
        if k % 5:
            boxes.append((name, "LY" if k % 2 else "PNN", 10, 10, 100 + k, 120))
    copies = [("exact_duplicate", 1, []), ("near_duplicate", 2, [4, 40]), ("conflicting_duplicate", 3, [7]),
              ("train_test_duplicate", 5, [1])]
    for kind, source, bits in copies:
        name = f"copy_{kind}.jpg"
        specs.append((name, "train", flip(int(hashes[source]), bits), WIDTH, HEIGHT))
        label = "MO" if kind == "conflicting_duplicate" else ("LY" if source % 2 else "PNN")
        boxes.append((name, label, 10, 10, 100 + source, 120))
        defects.append((kind, name, f"img{source:03d}.jpg", -1))
    boxes.append(("img004.jpg", "LY", -8, 5, WIDTH + 10, 120))
    defects.append(("out_of_image_box", "img004.jpg", "", len(boxes) - 1))
    defect_frame = pd.DataFrame(defects, columns=["kind", "name", "source", "row"]).assign(detail="")
    defect_frame = defect_frame.astype({"kind": "str", "name": "str", "source": "str", "detail": "str"})
    return ingest_images(specs), ingest_boxes(boxes), validate(defect_frame, DEFECTS)


def test_curate_writes_outputs_and_accounts_for_everything(tmp_path):
    images, boxes, defects = synthetic_dataset()
    write_table(defects, tmp_path / "defects.parquet", DEFECTS)
    images_path, boxes_path = write_ingest(tmp_path, images, boxes)
    summary = curate(images_path, boxes_path, tmp_path / "curation", max_distance=2, conflict_policy="keep_survivor",
                     near_policy="remove", n_folds=3, seed=1, bins=DEFAULT_BINS,
                     defects_path=tmp_path / "defects.parquet")
    written = json.loads((tmp_path / "curation" / "summary.json").read_text())
    assert written == summary
    for name in ("duplicate_groups.parquet", "images.parquet", "boxes.parquet", "folds.parquet", "ledger.csv",
                 "fold_balance.csv", "fold_balance.png"):
        assert (tmp_path / "curation" / name).stat().st_size > 0
    assert summary["images_balance_ok"] and summary["boxes_balance_ok"] and summary["ledger_matches_counts"]
    assert summary["images_in"] == len(images) and summary["boxes_in"] == len(boxes)
    assert summary["duplicate_groups"] == 4 and summary["conflicting_groups"] == 1
    assert summary["dedup_recall"] == 1.0 and summary["dedup_precision"] == 1.0
    assert summary["out_of_image_boxes_repaired"] == 1.0 and summary["boxes_clipped"] == 1
    assert summary["images_removed"] == 3  # exact, near and conflicting copies; the train-test copy stays
    assert sum(summary["folds"]["images_per_fold"]) == summary["deduplicate"]["train_images_kept"]


def test_dedup_precision_counts_member_pairs_inside_true_clusters():
    groups = pd.DataFrame({"group_id": [0, 0, 0, 1, 1], "name": ["a", "b", "c", "d", "e"]})
    defects = pd.DataFrame({"kind": ["exact_duplicate", "near_duplicate", "near_duplicate"],
                            "name": ["b", "x", "e"], "source": ["a", "y", "zz"]})
    scores = dedup_scores(groups, defects)
    # pairs found: (b,a) only; group pairs: 3 + 1, of which only (a,b) is linked by the defects
    assert scores["dedup_recall"] == pytest.approx(1 / 3)
    assert scores["dedup_precision"] == pytest.approx(1 / 4)


def test_summarize_without_defects_has_the_headline_keys():
    images, boxes, _ = synthetic_dataset()
    groups, curated, dedup_ledger, dedup_summary = deduplicate(images, boxes, max_distance=2,
                                                               conflict_policy="drop_group")
    _, repair_ledger, repair_summary = repair_boxes(boxes, curated)
    folds_summary = {"fold_max_class_deviation": 0.0, "fold_max_bin_deviation": 0.0}
    summary = summarize(dedup_summary, repair_summary, folds_summary, [dedup_ledger, repair_ledger])
    for key in ("images_in", "images_kept", "duplicate_groups", "boxes_clipped", "boxes_quarantined",
                "fold_max_class_deviation"):
        assert key in summary
    assert "dedup_recall" not in summary and summary["ledger_matches_counts"]


def test_summarize_from_files_matches_curate(tmp_path):
    images, boxes, defects = synthetic_dataset()
    write_table(defects, tmp_path / "defects.parquet", DEFECTS)
    images_path, boxes_path = write_ingest(tmp_path, images, boxes)
    options = {"max_distance": 2, "conflict_policy": "keep_survivor", "near_policy": "remove", "n_folds": 3,
               "seed": 1, "bins": DEFAULT_BINS, "defects_path": tmp_path / "defects.parquet"}
    whole = curate(images_path, boxes_path, tmp_path / "curation", **options)
    out = tmp_path / "curation"
    groups, curated, dedup_ledger, dedup = deduplicate(images, boxes, max_distance=2, conflict_policy="keep_survivor")
    _, repair_ledger, repair = repair_boxes(boxes, curated)
    for name, content in (("dedup.json", dedup), ("repair.json", repair), ("folds.json", whole["folds"])):
        (tmp_path / name).write_text(json.dumps(content))
    write_table(dedup_ledger, tmp_path / "dedup_ledger.csv", LEDGER)
    write_table(repair_ledger, tmp_path / "repair_ledger.csv", LEDGER)
    summary = summarize_from_files(
        dedup_summary=tmp_path / "dedup.json", repair_summary=tmp_path / "repair.json",
        folds_summary=tmp_path / "folds.json", ledgers=[tmp_path / "dedup_ledger.csv", tmp_path / "repair_ledger.csv"],
        ledger_out=tmp_path / "ledger.csv", groups_path=out / "duplicate_groups.parquet",
        defects_path=tmp_path / "defects.parquet",
    )
    volatile = {"seconds", "deduplicate", "repair_boxes"}
    assert {k: v for k, v in summary.items() if k not in volatile} == {
        k: v for k, v in whole.items() if k not in volatile}
    assert (tmp_path / "ledger.csv").read_text() == (out / "ledger.csv").read_text()
    with pytest.raises(ValueError, match="groups_path"):
        summarize_from_files(dedup_summary=tmp_path / "dedup.json", repair_summary=tmp_path / "repair.json",
                             folds_summary=tmp_path / "folds.json", ledgers=[], ledger_out=tmp_path / "x.csv",
                             defects_path=tmp_path / "defects.parquet")
