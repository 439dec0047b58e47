"""Synthetic truth for the duplicate search: realistic retakes and hard negatives
(leukoflow.synthetic.near_duplicates), checked in the files, then searched with the configured
two-stage dedup (every retake grouped with its source, no hard negative grouped)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from leukoflow import tables
from leukoflow.curation.duplicates import find_duplicates
from leukoflow.curation.summary import dedup_scores
from leukoflow.ingest import contract
from leukoflow.synthetic import challenge_layout, synthesize
from leukoflow.synthetic.near_duplicates import HARD_NEGATIVE_KIND, RETAKE_KINDS, retake
from tests.conftest import REPO

DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
PER_KIND = 5
KINDS = (*RETAKE_KINDS, HARD_NEGATIVE_KIND)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("near_duplicates")
    summary = synthesize(**challenge_layout(out), n_images=120, test_fraction=0.2, seed=9, jpeg_quality=90,
                         defects={kind: PER_KIND for kind in KINDS} | {"exact_duplicate": 2},
                         near_duplicate_max_distance=3, threads=1)
    defects = tables.read_table(out / "defects.parquet", tables.DEFECTS)
    return out, summary, defects


def test_every_kind_is_written_and_recorded(dataset):
    out, summary, defects = dataset
    train = pd.read_csv(out / "train.csv")
    for kind in KINDS:
        rows = defects[defects["kind"] == kind]
        assert len(rows) == PER_KIND == summary["defects"][kind]
        assert rows["detail"].str.contains("phash distance").all()
        for name, source in zip(rows["name"], rows["source"]):
            assert (out / "images" / name).is_file() and source in set(train["NAME"])
            assert (train["NAME"] == name).sum() >= 1  # a copy carries the boxes of its source
            with Image.open(out / "images" / name) as copy, Image.open(out / "images" / source) as original:
                assert copy.size == original.size
    assert len(list((out / "images").iterdir())) == summary["n_images"] == 120


def test_hard_negatives_share_the_plan_but_not_the_field(dataset):
    out, _, defects = dataset
    train = pd.read_csv(out / "train.csv")
    for name, source in defects.loc[defects["kind"] == HARD_NEGATIVE_KIND, ["name", "source"]].itertuples(index=False):
        boxes = train[train["NAME"] == name].sort_values(["x1", "y1"])[["x1", "y1", "x2", "y2", "class"]]
        original = train[train["NAME"] == source].sort_values(["x1", "y1"])[["x1", "y1", "x2", "y2", "class"]]
        assert sorted(boxes["class"]) == sorted(original["class"])  # same classes (and cell outlines)
        a = np.asarray(Image.open(out / "images" / name).convert("L"), dtype=float)
        b = np.asarray(Image.open(out / "images" / source).convert("L"), dtype=float)
        assert np.abs(a - b).mean() > 5  # another field of view, not a copy


def test_retake_moves_pixels_and_boxes_consistently():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    moved, dx, dy, detail = retake(rgb, "shifted_duplicate", np.random.default_rng(1))
    assert (dx, dy) != (0, 0) and "moved" in detail
    inside = moved[max(0, -dy) + 5:120 - max(0, dy) - 5, max(0, -dx) + 5:100 - max(0, dx) - 5]
    original = rgb[max(0, dy) + 5:120 + min(0, dy) - 5, max(0, dx) + 5:100 + min(0, dx) - 5]
    np.testing.assert_array_equal(inside, original)
    recoloured, dx, dy, _ = retake(rgb, "recoloured_duplicate", np.random.default_rng(2))
    assert (dx, dy) == (0, 0) and not np.array_equal(recoloured, rgb)


@pytest.mark.parametrize(("decode_reduction", "phash_reducing_gap"),
                         [(DEMO["ingest"]["decode_reduction"], DEMO["ingest"]["phash_reducing_gap"]), (1, None)],
                         ids=["configured_reduced_decode_and_hash", "exact_full_size_hash"])
def test_configured_search_groups_every_retake_and_no_hard_negative(dataset, tmp_path, decode_reduction,
                                                                    phash_reducing_gap):
    out, _, defects = dataset
    contract.run_into(tmp_path, train_csv=out / "train.csv", test_csv=out / "test.csv", images_dir=out / "images",
                      threads=1, chunksize=32, decode_reduction=decode_reduction,
                      phash_reducing_gap=phash_reducing_gap, max_image_mb=DEMO["ingest"]["max_image_mb"])
    images = tables.read_table(tmp_path / "images.parquet", tables.INGEST_IMAGES)
    boxes = tables.read_table(tmp_path / "boxes.parquet", tables.INGEST_BOXES)
    dedup = DEMO["dedup"]
    groups, _, _, summary = find_duplicates(
        images, boxes, max_distance=dedup["max_distance"], min_similarity=dedup["min_similarity"],
        conflict_policy=dedup["conflict_policy"], near_policy=dedup["near_policy"], holdout_fraction=0.0, seed=0,
        neighbours=dedup["neighbours"])
    scores = dedup_scores(groups, defects)
    assert all(scores["dedup_recall_by_kind"][kind] == 1.0 for kind in (*RETAKE_KINDS, "exact_duplicate")), scores
    assert scores["dedup_precision"] == 1.0 and scores["hard_negatives_grouped"] == 0
    loose = {**dedup, "max_distance": 16}  # candidates now include hard negatives and distinct smears
    options = {"conflict_policy": loose["conflict_policy"], "near_policy": loose["near_policy"],
               "holdout_fraction": 0.0, "seed": 0, "max_distance": loose["max_distance"],
               "neighbours": loose["neighbours"]}
    confirmed, _, _, loose_summary = find_duplicates(images, boxes, min_similarity=dedup["min_similarity"], **options)
    unconfirmed, *_ = find_duplicates(images, boxes, min_similarity=-1.0, **options)
    assert loose_summary["rejected_pairs"] >= 1
    assert dedup_scores(confirmed, defects)["dedup_precision"] == 1.0
    assert dedup_scores(unconfirmed, defects)["dedup_precision"] < 1.0
