"""Box repair edge cases (held-out boxes included), the curation entries on files, and the
curation summary's accounting and defect scores."""

from __future__ import annotations

import itertools

import json

import numpy as np
import pandas as pd
import pytest

from leukoflow.curation import deduplicate, make_folds, repair_boxes, summarize_curation
from leukoflow.curation.box_repair import repair_box_table
from leukoflow.curation.duplicates import find_duplicates
from leukoflow.curation.summary import dedup_scores, summarize
from leukoflow.tables import (
    CURATED_BOXES, CURATED_IMAGES, DEFECTS, FOLDS, INGEST_BOXES, INGEST_IMAGES, LEDGER, read_table, validate, write_table,
)
from tests.test_duplicates import BASE, FAR, OPTIONS, flip, ingest_boxes, ingest_images

WIDTH, HEIGHT = 360, 363
BINS = {"surface": 5, "box_ratio": 5, "mean": 5, "std": 4}


def curated_images(images: pd.DataFrame, boxes: pd.DataFrame, **options) -> pd.DataFrame:
    _, curated, _, _ = find_duplicates(images, boxes, **{**OPTIONS, "max_distance": 2, **options})
    return curated


def repair(boxes: pd.DataFrame, images: pd.DataFrame):
    """repair_box_table for datasets without a held-out split: (kept boxes, ledger, summary)."""
    kept, held_out, ledger, summary = repair_box_table(boxes, images)
    assert held_out.empty and summary["boxes_held_out"] == 0
    return kept, ledger, summary


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
    curated, ledger, summary = repair(boxes, curated_images(images, boxes))
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
    parts = ("boxes_kept", "boxes_held_out", "boxes_quarantined", "boxes_removed_with_image")
    assert summary["boxes_in"] == sum(summary[part] for part in parts)


def test_inverted_y_is_quarantined_even_when_clipping_would_not_notice():
    images = ingest_images([("a.jpg", "train", BASE)])
    boxes = ingest_boxes([("a.jpg", "LY", 10, 200, 100, 20)])
    curated, ledger, _ = repair(boxes, curated_images(images, boxes))
    assert curated.empty and list(ledger["reason"]) == ["inverted_box"]


def test_conflict_dropped_images_take_their_boxes_along():
    images = ingest_images([("a.jpg", "train", BASE), ("b.jpg", "train", BASE)])
    boxes = ingest_boxes([("a.jpg", "LY"), ("b.jpg", "PNN")])
    curated, ledger, summary = repair(boxes, curated_images(images, boxes, conflict_policy="drop_group"))
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


def run_curation_entries(tmp_path, images, boxes, defects=None, **options) -> tuple[dict, dict]:
    """The four curation rule entries on files, as the workflow chains them; returns (summary, paths)."""
    images_path, boxes_path = write_ingest(tmp_path, images, boxes)
    out = tmp_path / "curation"
    paths = {name: out / name for name in ("duplicate_groups.parquet", "images.parquet", "dedup_ledger.csv",
                                           "boxes.parquet", "held_out_boxes.parquet", "repair_ledger.csv",
                                           "folds.parquet", "fold_balance.csv", "fold_balance.png", "ledger.csv")}
    steps = {
        "dedup.json": deduplicate(ingest_images=images_path, ingest_boxes=boxes_path,
                                  groups=paths["duplicate_groups.parquet"], images=paths["images.parquet"],
                                  ledger=paths["dedup_ledger.csv"], **{**OPTIONS, "max_distance": 2, **options}),
        "repair.json": repair_boxes(ingest_boxes=boxes_path, curated_images=paths["images.parquet"],
                                    boxes=paths["boxes.parquet"], held_out_boxes=paths["held_out_boxes.parquet"],
                                    ledger=paths["repair_ledger.csv"]),
        "folds.json": make_folds(curated_images=paths["images.parquet"], curated_boxes=paths["boxes.parquet"],
                                 folds=paths["folds.parquet"], balance=paths["fold_balance.csv"],
                                 plot=paths["fold_balance.png"], n_folds=3, seed=1, bins=BINS),
    }
    for name, content in steps.items():
        (tmp_path / name).write_text(json.dumps(content))
    defect_table = []
    if defects is not None:
        write_table(defects, tmp_path / "defects.parquet", DEFECTS)
        defect_table = [tmp_path / "defects.parquet"]
    summary = summarize_curation(
        dedup_summary=tmp_path / "dedup.json", repair_summary=tmp_path / "repair.json",
        folds_summary=tmp_path / "folds.json", groups=paths["duplicate_groups.parquet"],
        dedup_ledger=paths["dedup_ledger.csv"], repair_ledger=paths["repair_ledger.csv"],
        defect_table=defect_table, ledger=paths["ledger.csv"])
    return summary, paths


def test_curation_entries_write_outputs_and_account_for_everything(tmp_path):
    images, boxes, defects = synthetic_dataset()
    summary, paths = run_curation_entries(tmp_path, images, boxes, defects)
    for path in paths.values():
        assert path.stat().st_size > 0
    merged = read_table(paths["ledger.csv"], LEDGER)
    assert len(merged) == len(read_table(paths["dedup_ledger.csv"], LEDGER)) + len(
        read_table(paths["repair_ledger.csv"], LEDGER))
    assert summary["images_balance_ok"] and summary["boxes_balance_ok"] and summary["ledger_matches_counts"]
    assert summary["images_in"] == len(images) and summary["boxes_in"] == len(boxes)
    assert summary["duplicate_groups"] == 4 and summary["conflicting_groups"] == 1
    assert summary["dedup_recall"] == 1.0 and summary["dedup_precision"] == 1.0
    assert set(summary["dedup_recall_by_kind"].values()) == set(summary["dedup_precision_by_kind"].values()) == {1.0}
    assert summary["out_of_image_boxes_repaired"] == 1.0 and summary["boxes_clipped"] == 1
    assert summary["images_removed"] == 3  # exact, near and conflicting copies; the train-test copy stays
    assert sum(summary["folds"]["images_per_fold"]) == summary["deduplicate"]["train_images_kept"]
    assert len(read_table(paths["folds.parquet"], FOLDS)) == summary["deduplicate"]["train_images_kept"]
    assert summary["boxes_held_out"] == 0 and read_table(paths["held_out_boxes.parquet"], CURATED_BOXES).empty


def test_held_out_boxes_pass_the_same_checks_and_stay_out_of_training(tmp_path):
    names = [f"img{k:02d}.jpg" for k in range(20)]
    rng = np.random.default_rng(2)
    images = ingest_images([(name, "train", int(rng.integers(0, 2**63)), WIDTH, HEIGHT) for name in names])
    boxes = ingest_boxes([(name, "LY", -4, 10, WIDTH + 6, 120) for name in names]  # every box sticks out
                         + [(name, "MO", 50, 60, 20, 100) for name in names])  # every image has an inverted box
    summary, paths = run_curation_entries(tmp_path, images, boxes, holdout_fraction=0.25)
    held_out = read_table(paths["held_out_boxes.parquet"], CURATED_BOXES)
    kept = read_table(paths["boxes.parquet"], CURATED_BOXES)
    curated = read_table(paths["images.parquet"], CURATED_IMAGES)
    test_names = set(curated.loc[curated["split"] == "test", "name"])
    assert len(test_names) == 5 and set(held_out["name"]) == test_names and not set(kept["name"]) & test_names
    assert held_out["clipped"].all() and (held_out["x1"] == 0).all() and (held_out["x2"] == WIDTH - 1).all()
    ledger = read_table(paths["ledger.csv"], LEDGER)
    on_test = ledger[ledger["name"].isin(test_names)]
    assert sorted(on_test["reason"].unique()) == ["clipped_to_image", "inverted_box"] and len(on_test) == 10
    assert summary["boxes_held_out"] == 5 and summary["boxes_balance_ok"] and summary["ledger_matches_counts"]
    assert summary["boxes_in"] == summary["boxes_kept"] + summary["boxes_held_out"] + summary["boxes_quarantined"]


def test_dedup_precision_counts_member_pairs_inside_true_clusters():
    groups = pd.DataFrame({"group_id": [0, 0, 0, 1, 1], "name": ["a", "b", "c", "d", "e"]})
    defects = pd.DataFrame({"kind": ["exact_duplicate", "near_duplicate", "near_duplicate"],
                            "name": ["b", "x", "e"], "source": ["a", "y", "zz"]})
    scores = dedup_scores(groups, defects)
    # pairs found: (b,a) only; group pairs: 3 + 1, of which only (a,b) is linked by the defects
    assert scores["dedup_recall"] == pytest.approx(1 / 3)
    assert scores["dedup_precision"] == pytest.approx(1 / 4)


def test_dedup_precision_counts_equal_listing_every_member_pair():
    """Counting per group and true cluster (no pair list: a loose search can group most images)
    gives what listing every member pair gives, overall and per kind."""
    rng = np.random.default_rng(3)
    names = [f"i{k:03d}" for k in range(120)]
    groups = pd.DataFrame({"group_id": rng.integers(0, 9, size=80), "name": names[:80]})
    kinds = rng.choice(["exact_duplicate", "near_duplicate", "shifted_duplicate"], size=60)
    defects = pd.DataFrame({"kind": kinds, "name": rng.choice(names, size=60, replace=False),
                            "source": rng.choice(names, size=60)})
    defects = defects[defects["name"] != defects["source"]]
    scores = dedup_scores(groups, defects)
    linked = {frozenset(pair) for pair in zip(defects["name"], defects["source"])}
    cluster = {name: {name} for name in names}
    for first, second in linked:  # union of the defect pairs' components, by listing
        merged = cluster[first] | cluster[second]
        for name in merged:
            cluster[name] = merged
    listed = [(a, b, b in cluster[a]) for _, members in groups.groupby("group_id")
              for a, b in itertools.combinations(sorted(members["name"]), 2)]
    assert scores["dedup_group_pairs"] == len(listed)
    assert scores["dedup_precision"] == pytest.approx(sum(true for *_, true in listed) / len(listed), abs=1e-6)
    for kind, precision in scores["dedup_precision_by_kind"].items():
        copies = set(defects.loc[defects["kind"] == kind, "name"])
        touching = [true for a, b, true in listed if a in copies or b in copies]
        assert precision == (pytest.approx(sum(touching) / len(touching), abs=1e-6) if touching else None)


def test_summarize_without_defects_has_the_headline_keys():
    images, boxes, _ = synthetic_dataset()
    groups, curated, dedup_ledger, dedup_summary = find_duplicates(
        images, boxes, **{**OPTIONS, "max_distance": 2, "conflict_policy": "drop_group"})
    _, repair_ledger, repair_summary = repair(boxes, curated)
    folds_summary = {"fold_max_class_deviation": 0.0, "fold_max_bin_deviation": 0.0}
    summary = summarize(dedup_summary, repair_summary, folds_summary, [dedup_ledger, repair_ledger])
    for key in ("images_in", "images_kept", "duplicate_groups", "boxes_clipped", "boxes_quarantined",
                "fold_max_class_deviation"):
        assert key in summary
    assert "dedup_recall" not in summary and summary["ledger_matches_counts"]
