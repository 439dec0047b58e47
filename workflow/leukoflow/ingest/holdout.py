"""A scored test split held out of a dataset that ships only annotations (e.g. the BCCD smears).

The held-out rows pass the same data contract as the training rows: ingest checks and decodes
every row of train.csv, `deduplicate` draws the split (`held_out`) by duplicate group, so no
group straddles training and test, and `repair_boxes` clips or quarantines the held-out boxes
with ledger lines like any box. `hold_out_test` then only writes the challenge-shaped tables
from those checked rows: the test table (one row per expected cell, rows shuffled, trustii_id
1..n), test.csv and test_truth.csv with the answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.constants import TEST_COLUMNS, TRAIN_COLUMNS

FIRST_TRUSTII_ID = 1


def held_out(units: pd.Series, *, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows whose unit (an image, or a duplicate group) goes to the test split.

    Units are drawn in a seeded random order until `round(fraction * rows)` rows are held out;
    every row of a drawn unit goes, so a group is never split.
    """
    if not 0.0 <= fraction < 1.0 or not np.isfinite(fraction):
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    names = np.array(sorted(units.astype("str").unique()))
    sizes = units.astype("str").value_counts().reindex(names).to_numpy()
    order = np.random.default_rng(seed).permutation(len(names))
    target = int(round(fraction * len(units)))
    taken = np.cumsum(sizes[order]) - sizes[order] < target  # a unit is taken while the target is unmet
    return units.astype("str").isin(set(names[order[taken]])).to_numpy() if target else np.zeros(len(units), bool)


def no_test_table(*, test_csv: str | Path) -> dict:
    """Rule `no_test_table`: a header-only test.csv, so ingest checks every annotated row as training."""
    Path(test_csv).parent.mkdir(parents=True, exist_ok=True)
    Path(test_csv).write_text(",".join(TEST_COLUMNS) + "\n")
    return {"rows": 0}


def hold_out_test(*, held_out_boxes: str | Path, curated_images: str | Path, test_table: str | Path,
                  test_csv: str | Path, test_truth: str | Path, seed: int) -> dict:
    """Rule `hold_out_test`: the held-out images' checked boxes -> test table, test.csv, test_truth.csv.

    Args:
        held_out_boxes: CURATED_BOXES rows of the test-split images (clipped by repair_boxes).
        curated_images: CURATED_IMAGES with the split drawn by deduplicate.
        test_table: INGEST_TEST parquet for the later stages (one row per expected cell).
        test_csv, test_truth: the challenge-shaped tables (trustii_id,NAME and the answers).
        seed: seed of the row order.
    """
    boxes = tables.read_table(held_out_boxes, tables.CURATED_BOXES)
    images = tables.read_table(curated_images, tables.CURATED_IMAGES)
    test_images = images.loc[images["split"] == "test", "name"]
    outside = sorted(set(boxes["name"]) - set(test_images))
    if outside:
        raise ValueError(f"{held_out_boxes}: boxes of {outside[:3]} whose images are not in the test split")
    truth = boxes.sort_values("row", kind="stable").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    truth.insert(0, "trustii_id", np.arange(FIRST_TRUSTII_ID, FIRST_TRUSTII_ID + len(truth), dtype=np.int64))
    truth = truth.rename(columns={"name": "NAME", "label": "class"})
    for column in TRAIN_COLUMNS[1:5]:
        truth[column] = truth[column].round().astype("int64")
    _write_tables(truth, test_table, test_csv, test_truth)
    return {
        "test_images": int(len(test_images)), "train_images": int((images["split"] == "train").sum()),
        "test_rows": int(len(truth)), "test_images_without_boxes": int((~test_images.isin(boxes["name"])).sum()),
    }


def _write_tables(truth: pd.DataFrame, test_table: str | Path, test_csv: str | Path, test_truth: str | Path) -> None:
    for path in (test_table, test_csv, test_truth):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"row": np.arange(len(truth), dtype=np.int64), "trustii_id": truth["trustii_id"],
                          "name": truth["NAME"].astype("str"), "status": "ok", "reason": ""})
    tables.write_table(tables.schema_frame(table.to_dict("series"), tables.INGEST_TEST), test_table, tables.INGEST_TEST)
    truth[list(TEST_COLUMNS)].to_csv(test_csv, index=False)
    truth[["trustii_id", *TRAIN_COLUMNS]].to_csv(test_truth, index=False)
