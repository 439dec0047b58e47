"""Folds: group-awareness, determinism, one-hot bins, balance on the real annotation table, the rule entry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukoflow.constants import CLASS_TO_INDEX, CLASSES
from leukoflow.curation import make_folds
from leukoflow.curation.folds import _indicator_matrix, _per_image, plot_fold_balance, stratified_folds
from leukoflow.tables import CURATED_BOXES, CURATED_IMAGES, FOLDS, read_table, schema_frame, validate, write_table
from tests.conftest import shared_path

N_FOLDS = 4
DEFAULT_BINS = {"surface": 5, "box_ratio": 5, "mean": 5, "std": 4}


def curated_tables(n_images: int = 240, seed: int = 0, groups: dict[int, list[int]] | None = None):
    """Kept train images with 1-3 boxes of random classes; `groups` maps group_id -> image indices."""
    rng = np.random.default_rng(seed)
    names = [f"{k:04d}.jpg" for k in range(n_images)]
    group_id = np.full(n_images, -1)
    for gid, members in (groups or {}).items():
        group_id[members] = gid
    side = rng.choice([300, 360, 512, 608], n_images)
    images = pd.DataFrame({
        "name": names, "split": "train", "path": "", "width": side, "height": side,
        "pixel_mean": rng.normal(190, 20, n_images), "pixel_std": rng.normal(45, 10, n_images),
        "group_id": group_id, "role": np.where(group_id >= 0, "survivor", "unique"),
        "train_test_duplicate": False, "keep": True,
    }).astype({"name": "str", "split": "str", "path": "str", "role": "str", "width": "int64", "height": "int64"})
    rows = []
    for k, name in enumerate(names):
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = rng.uniform(0, 100, 2)
            size = rng.uniform(40, 180)
            cls = int(rng.integers(0, 6))
            rows.append((len(rows), name, x1, y1, x1 + size, y1 + size, CLASSES[cls], cls, False))
    boxes = pd.DataFrame(rows, columns=CURATED_BOXES.column_names).astype({"name": "str", "label": "str"})
    return validate(images, CURATED_IMAGES), validate(boxes, CURATED_BOXES)


def test_duplicate_groups_stay_in_one_fold():
    groups = {0: [3, 50, 97], 1: [10, 11], 2: [200, 5, 120, 121]}
    images, boxes = curated_tables(groups=groups)
    folds, _, summary = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=42, bins=DEFAULT_BINS)
    validate(folds, FOLDS)
    for members in groups.values():
        assert folds.loc[members, "fold"].nunique() == 1
    assert summary["groups_kept_together"] == 3
    assert sorted(folds["fold"].unique()) == list(range(N_FOLDS))


def test_removed_and_test_images_get_no_fold():
    images, boxes = curated_tables(n_images=40)
    images.loc[0, "keep"] = False
    images.loc[1, "split"] = "test"
    folds, _, summary = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=0, bins=DEFAULT_BINS)
    assert not {"0000.jpg", "0001.jpg"} & set(folds["name"]) and summary["images"] == 38


def test_folds_are_byte_identical_across_runs_and_row_orders(tmp_path):
    images, boxes = curated_tables()
    first, _, _ = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=7, bins=DEFAULT_BINS)
    shuffled, _, _ = stratified_folds(images.sample(frac=1, random_state=1), boxes.sample(frac=1, random_state=2),
                                n_folds=N_FOLDS, seed=7, bins=DEFAULT_BINS)
    write_table(first, tmp_path / "a.parquet", FOLDS)
    write_table(shuffled, tmp_path / "b.parquet", FOLDS)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    other, _, _ = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=8, bins=DEFAULT_BINS)
    assert not np.array_equal(other["fold"], first["fold"])


def test_every_bin_is_its_own_stratification_column(tmp_path):
    images, boxes = curated_tables()
    folds, balance, _ = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=0, bins=DEFAULT_BINS)
    bin_rows = balance.loc[balance["kind"] == "bin", "feature"].tolist()
    expected = [f"{key}_bin={k}" for key, n in DEFAULT_BINS.items() for k in range(n)]
    assert bin_rows == expected
    assert balance.loc[balance["kind"] == "class", "feature"].tolist() == list(CLASSES)
    for key, n in DEFAULT_BINS.items():
        assert folds[f"{key}_bin"].between(0, n - 1).all()
        assert balance.loc[balance["feature"].str.startswith(f"{key}_bin="), "total"].sum() == len(folds)
    # one 0/1 column per bin (not the winner's integer bins, which iterstrat reads as "bin != 0")
    train, presence = _per_image(images, boxes)
    for key, n in DEFAULT_BINS.items():
        train[f"{key}_bin"] = folds[f"{key}_bin"]
    matrix, names = _indicator_matrix(train, presence, DEFAULT_BINS)
    assert matrix.shape == (len(folds), len(CLASSES) + sum(DEFAULT_BINS.values()))
    assert set(np.unique(matrix)) <= {0, 1}
    start = len(CLASSES)
    for n in DEFAULT_BINS.values():
        assert (matrix[:, start:start + n].sum(axis=1) == 1).all()
        start += n
    plot_fold_balance(balance, tmp_path / "balance.png")
    assert (tmp_path / "balance.png").read_bytes()[:4] == b"\x89PNG"


def test_multilabel_and_box_counts():
    images, boxes = curated_tables(n_images=20)
    folds, _, summary = stratified_folds(images, boxes, n_folds=N_FOLDS, seed=0, bins=DEFAULT_BINS)
    first = boxes[boxes["name"] == "0000.jpg"]
    row = folds.set_index("name").loc["0000.jpg"]
    assert row["n_boxes"] == len(first)
    assert row["multilabel"] == "|".join(str(k) for k in sorted(set(first["class_idx"])))
    assert sum(summary["boxes_per_fold"]) == len(boxes)


def test_bad_parameters_are_refused():
    images, boxes = curated_tables(n_images=10)
    with pytest.raises(ValueError, match="n_folds"):
        stratified_folds(images, boxes, n_folds=1, seed=0, bins=DEFAULT_BINS)
    with pytest.raises(ValueError, match="bins"):
        stratified_folds(images, boxes, n_folds=2, seed=0, bins={"surface": 5})


def test_real_annotation_folds_balance_every_class_within_two_percent():
    train_csv = shared_path("data", "cytologia", "train.csv")
    boxes = annotation_boxes(train_csv)
    folds, balance, summary = stratified_folds(stand_in_images(boxes, seed=42), boxes, n_folds=N_FOLDS, seed=42,
                                               bins=DEFAULT_BINS)
    assert summary["images"] == folds["name"].nunique() == 48417
    classes = balance[balance["kind"] == "class"]
    assert (classes["max_relative_deviation"] <= 0.02).all(), classes.sort_values("max_relative_deviation").tail()
    assert summary["fold_max_class_deviation"] <= 0.02


def annotation_boxes(train_csv) -> pd.DataFrame:
    """CURATED_BOXES from an annotation table alone (every row kept as given)."""
    table = pd.read_csv(train_csv, dtype={"NAME": "str", "class": "str"}, keep_default_na=False)
    columns = {
        "row": np.arange(len(table)), "name": table["NAME"],
        **{c: table[c].astype(float) for c in ("x1", "y1", "x2", "y2")},
        "label": table["class"], "class_idx": table["class"].map(CLASS_TO_INDEX), "clipped": False,
    }
    return schema_frame(columns, CURATED_BOXES)


def stand_in_images(boxes: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One kept train image per NAME with seeded stand-in size and pixel statistics (no image files)."""
    extent = boxes.groupby("name")[["x2", "y2"]].max().sort_index()
    rng = np.random.default_rng(seed)
    n = len(extent)
    width = np.maximum(rng.integers(295, 400, n), np.ceil(extent["x2"].to_numpy()) + 1)
    height = np.maximum(rng.integers(295, 400, n), np.ceil(extent["y2"].to_numpy()) + 1)
    return pd.DataFrame({
        "name": extent.index.astype("str"), "split": "train", "path": "", "width": width.astype("int64"),
        "height": height.astype("int64"), "pixel_mean": rng.normal(190.0, 20.0, n),
        "pixel_std": rng.normal(45.0, 10.0, n), "group_id": -1, "role": "unique",
        "train_test_duplicate": False, "keep": True,
    })


def test_make_folds_entry_writes_folds_balance_and_plot(tmp_path):
    images, boxes = curated_tables(n_images=40)
    write_table(images, tmp_path / "images.parquet", CURATED_IMAGES)
    write_table(boxes, tmp_path / "boxes.parquet", CURATED_BOXES)
    out = {"folds": tmp_path / "out" / "folds.parquet", "balance": tmp_path / "out" / "balance.csv",
           "plot": tmp_path / "out" / "balance.png"}
    summary = make_folds(curated_images=tmp_path / "images.parquet", curated_boxes=tmp_path / "boxes.parquet",
                         **out, n_folds=N_FOLDS, seed=3, bins=DEFAULT_BINS)
    folds = read_table(out["folds"], FOLDS)
    assert len(folds) == summary["images"] == 40 and sorted(folds["fold"].unique()) == list(range(N_FOLDS))
    assert len(pd.read_csv(out["balance"])) == len(CLASSES) + sum(DEFAULT_BINS.values())
    assert out["plot"].stat().st_size > 0
