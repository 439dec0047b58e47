"""Held-out test split (datasets without test.csv): drawn by duplicate group, every held-out row
through the same contract as training rows, and the challenge-shaped tables written from them.

The BCCD tests run the real chain (ingest with a header-only test.csv -> deduplicate ->
repair_boxes -> hold_out_test) on config/bccd.yaml's settings; they skip cleanly where
../shared/data/bccd is absent.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from leukoflow import tables
from leukoflow.curation import deduplicate, repair_boxes
from leukoflow.engine.config import load_config
from leukoflow.ingest import contract, hold_out_test, no_test_table
from leukoflow.ingest.holdout import held_out
from tests.conftest import REPO, shared_path
from tests.test_duplicates import OPTIONS, ingest_boxes, ingest_images

BCCD = load_config(REPO / "config" / "bccd.yaml")
# Pairs of real BCCD smears that show the same field of view, checked by eye (BENCHMARKS.md): 00037/00038
# slightly moved and refocused (pHash distance 4), the others moved by up to ~15 % (distance 14-28).
# Every pair the search groups must be one of them, and 00037/00038 must be grouped.
BCCD_PAIR = ("BloodImage_00037.jpg", "BloodImage_00038.jpg")
BCCD_SAME_FIELD = {BCCD_PAIR, ("BloodImage_00386.jpg", "BloodImage_00391.jpg"),
                   ("BloodImage_00382.jpg", "BloodImage_00395.jpg"), ("BloodImage_00229.jpg", "BloodImage_00258.jpg"),
                   ("BloodImage_00227.jpg", "BloodImage_00260.jpg")}


# ---------------------------------------------------------------- the draw

def test_held_out_draws_whole_units_to_the_target_share():
    units = pd.Series([f"group {k // 3}" for k in range(30)] + [f"single {k}" for k in range(70)])
    mask = held_out(units, fraction=0.25, seed=1)
    assert abs(mask.sum() - 25) <= 2
    by_unit = pd.Series(mask).groupby(units).agg(["min", "max"])
    assert (by_unit["min"] == by_unit["max"]).all()  # no unit split
    np.testing.assert_array_equal(mask, held_out(units.sample(frac=1, random_state=0).sort_index(), fraction=0.25,
                                                 seed=1))
    assert not held_out(units, fraction=0.0, seed=1).any()
    with pytest.raises(ValueError, match="fraction"):
        held_out(units, fraction=float("nan"), seed=1)


def test_no_test_table_is_a_header_only_challenge_test_csv(tmp_path):
    assert no_test_table(test_csv=tmp_path / "h" / "no_test.csv") == {"rows": 0}
    assert (tmp_path / "h" / "no_test.csv").read_text() == "trustii_id,NAME\n"


# ---------------------------------------------------------------- hold_out_test on checked rows

def curated_with_holdout(tmp_path, fraction: float = 0.3):
    rng = np.random.default_rng(5)
    names = [f"img{k:02d}.jpg" for k in range(20)]
    images = ingest_images([(name, "train", int(rng.integers(0, 2**63))) for name in names])
    boxes = ingest_boxes([(name, "LY", 10.5, 20, 200, 220) for name in names]
                         + [(name, "MO", -5, 0, 100, 100) for name in names[:10]])
    tables.write_table(images, tmp_path / "ingest_images.parquet", tables.INGEST_IMAGES)
    tables.write_table(boxes, tmp_path / "ingest_boxes.parquet", tables.INGEST_BOXES)
    deduplicate(ingest_images=tmp_path / "ingest_images.parquet", ingest_boxes=tmp_path / "ingest_boxes.parquet",
                groups=tmp_path / "groups.parquet", images=tmp_path / "images.parquet", ledger=tmp_path / "d.csv",
                **{**OPTIONS, "holdout_fraction": fraction, "seed": 2})
    repair_boxes(ingest_boxes=tmp_path / "ingest_boxes.parquet", curated_images=tmp_path / "images.parquet",
                 boxes=tmp_path / "boxes.parquet", held_out_boxes=tmp_path / "held_out.parquet",
                 ledger=tmp_path / "r.csv")
    return tmp_path / "held_out.parquet", tmp_path / "images.parquet"


def run_hold_out(tmp_path, held, images, out: str = "out") -> tuple[dict, dict]:
    paths = {"test_table": tmp_path / out / "test.parquet", "test_csv": tmp_path / out / "test.csv",
             "test_truth": tmp_path / out / "test_truth.csv"}
    return hold_out_test(held_out_boxes=held, curated_images=images, seed=3, **paths), paths


def test_hold_out_test_writes_the_challenge_tables_from_checked_rows(tmp_path):
    held, images = curated_with_holdout(tmp_path)
    summary, paths = run_hold_out(tmp_path, held, images)
    truth = pd.read_csv(paths["test_truth"])
    test = pd.read_csv(paths["test_csv"])
    table = tables.read_table(paths["test_table"], tables.INGEST_TEST)
    curated = tables.read_table(images, tables.CURATED_IMAGES)
    test_names = set(curated.loc[curated["split"] == "test", "name"])
    assert summary["test_images"] == len(test_names) == 6 and set(truth["NAME"]) == test_names
    assert list(truth.columns) == ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]
    assert list(test["trustii_id"]) == list(truth["trustii_id"]) == list(table["trustii_id"])
    assert sorted(truth["trustii_id"]) == list(range(1, len(truth) + 1)) and summary["test_rows"] == len(truth)
    assert (truth["x1"] >= 0).all()  # held-out boxes were clipped by repair_boxes like training boxes
    assert truth["x1"].dtype == np.int64
    assert (table["status"] == "ok").all() and list(table["name"]) == list(truth["NAME"])


def test_hold_out_test_is_deterministic(tmp_path):
    held, images = curated_with_holdout(tmp_path)
    _, first = run_hold_out(tmp_path, held, images, "a")
    _, second = run_hold_out(tmp_path, held, images, "b")
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes()


def test_hold_out_test_refuses_boxes_of_training_images(tmp_path):
    held, images = curated_with_holdout(tmp_path)
    everything = tables.read_table(tmp_path / "boxes.parquet", tables.CURATED_BOXES)
    tables.write_table(everything, tmp_path / "wrong.parquet", tables.CURATED_BOXES)
    with pytest.raises(ValueError, match="not in the test split"):
        run_hold_out(tmp_path, tmp_path / "wrong.parquet", images)


# ---------------------------------------------------------------- BCCD: real smears

@pytest.fixture(scope="module")
def bccd_chain(tmp_path_factory) -> dict:
    """config/bccd.yaml's holdout through ingest, deduplicate, repair_boxes and hold_out_test."""
    data = shared_path("data", "bccd")
    out = tmp_path_factory.mktemp("bccd_holdout")
    no_test_table(test_csv=out / "no_test.csv")
    ingest_summary = contract.run_into(out / "ingest", train_csv=data / "train.csv", test_csv=out / "no_test.csv",
                                       images_dir=data / "images", threads=1, chunksize=BCCD["ingest"]["chunksize"],
                                       decode_reduction=BCCD["ingest"]["decode_reduction"],
                                       phash_reducing_gap=BCCD["ingest"]["phash_reducing_gap"],
                                       max_image_mb=BCCD["ingest"]["max_image_mb"])
    dedup = BCCD["dedup"]
    dedup_summary = deduplicate(
        ingest_images=out / "ingest" / "images.parquet", ingest_boxes=out / "ingest" / "boxes.parquet",
        groups=out / "groups.parquet", images=out / "images.parquet", ledger=out / "dedup_ledger.csv",
        max_distance=dedup["max_distance"], min_similarity=dedup["min_similarity"],
        conflict_policy=dedup["conflict_policy"], near_policy=dedup["near_policy"],
        holdout_fraction=BCCD["data"]["holdout_fraction"], seed=BCCD["seed"], neighbours=dedup["neighbours"])
    repair_summary = repair_boxes(ingest_boxes=out / "ingest" / "boxes.parquet", curated_images=out / "images.parquet",
                                  boxes=out / "boxes.parquet", held_out_boxes=out / "held_out.parquet",
                                  ledger=out / "repair_ledger.csv")
    holdout_summary, paths = run_hold_out(out, out / "held_out.parquet", out / "images.parquet", "holdout")
    return {"out": out, "data": data, "ingest": ingest_summary, "dedup": dedup_summary, "repair": repair_summary,
            "holdout": holdout_summary, "paths": paths}


def test_bccd_holdout_keeps_the_ingest_accounting_invariant(bccd_chain):
    summary = bccd_chain["ingest"]
    source = pd.read_csv(bccd_chain["data"] / "train.csv")
    assert summary["rows_in"] == summary["train_rows"] == len(source) and summary["test_rows"] == 0
    assert summary["rows_in"] == summary["rows_kept"] + summary["rows_repaired"] + summary["rows_quarantined"]
    ledger = tables.read_table(bccd_chain["out"] / "ingest" / "ledger.csv", tables.LEDGER)
    on_rows = ledger[ledger["table"] == "train.csv"]
    assert on_rows["row"].nunique() >= summary["rows_repaired"] + summary["rows_quarantined"] - len(
        ledger[ledger["table"] == "images"])  # every repaired/quarantined row has its ledger line or its image's


def test_bccd_held_out_rows_all_come_from_checked_rows(bccd_chain):
    boxes = tables.read_table(bccd_chain["out"] / "ingest" / "boxes.parquet", tables.INGEST_BOXES)
    truth = pd.read_csv(bccd_chain["paths"]["test_truth"])
    train = tables.read_table(bccd_chain["out"] / "boxes.parquet", tables.CURATED_BOXES)
    usable = boxes[boxes["status"] != "quarantined"]
    assert not set(truth["NAME"]) & set(train["name"])
    assert len(truth) == bccd_chain["repair"]["boxes_held_out"] == bccd_chain["holdout"]["test_rows"]
    assert set(truth["NAME"]) <= set(usable["name"])
    repair = bccd_chain["repair"]
    assert repair["boxes_in"] == repair["boxes_kept"] + repair["boxes_held_out"] + repair["boxes_quarantined"] + \
        repair["boxes_removed_with_image"] == len(usable)
    assert abs(bccd_chain["holdout"]["test_images"] - 0.25 * bccd_chain["dedup"]["images_in"]) <= 2


def test_bccd_groups_only_same_field_pairs_and_keep_them_on_one_side(bccd_chain):
    groups = tables.read_table(bccd_chain["out"] / "groups.parquet", tables.DUPLICATE_GROUPS)
    pairs = {tuple(sorted(members)) for _, members in groups.groupby("group_id")["name"]}
    assert BCCD_PAIR in pairs and pairs <= BCCD_SAME_FIELD
    assert groups.groupby("group_id")["split"].nunique().max() == 1 and bccd_chain["dedup"]["train_test_groups"] == 0
    pair = groups.set_index("name").loc[list(BCCD_PAIR)]
    assert (pair["kind"] == "near").all() and (pair["hash_distance"] == 4).all() and (pair["similarity"] > 0.95).all()
