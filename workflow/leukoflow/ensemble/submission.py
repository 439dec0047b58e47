"""The challenge submission: test boxes + ensemble classes, one row per test.csv row (docs/method.md §10.1-§10.2).

Every test row gets its box from the test-box table (detector-1 folds fused by WBF, top-N by the
known count, padded with the full-image box) and its class from the ensemble's test classes,
joined on trustii_id. A row without a crop (its image could not be read) keeps its full-image box
and gets the fallback class (the most frequent OOF class); the count is in the summary. Boxes are
written as integers. The table is checked with the strict validator before it is written, and
scored with the official metric when the test truth is known (synthetic demo, hold-out split).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import metric

from leukoflow import tables
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import tracked

LOGGER = logging.getLogger(__name__)
XYXY = ["x1", "y1", "x2", "y2"]


def assemble(test: pd.DataFrame, test_boxes: pd.DataFrame, classes: pd.DataFrame, *,
             fallback_class: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SUBMISSION rows in test.csv order (INGEST_TEST `row`) and the counts of how each was filled.

    Raises:
        ValueError: a test row has no box, or the fallback class is not a class code.
    """
    if fallback_class not in CLASSES:
        raise ValueError(f"submission: fallback class {fallback_class!r} is not a class code")
    ordered = test.sort_values("row", kind="stable")[["row", "trustii_id", "name"]]
    with_boxes = ordered.merge(test_boxes[["row", *XYXY, "source"]], on="row", how="left", validate="one_to_one")
    missing = with_boxes["x1"].isna()
    if missing.any():
        first = with_boxes[missing].iloc[0]
        raise ValueError(f"submission: {int(missing.sum())} test row(s) have no box in the test-box table, "
                         f"e.g. test.csv row {int(first['row'])} (trustii_id {int(first['trustii_id'])})")
    labels = classes.drop_duplicates("trustii_id").set_index("trustii_id")["label"]
    label = with_boxes["trustii_id"].map(labels)
    fallback = label.isna()
    rounded = np.round(with_boxes[XYXY].to_numpy(float)).astype("int64")
    frame = pd.DataFrame({
        "trustii_id": with_boxes["trustii_id"].astype("int64").to_numpy(),
        "NAME": pd.Series(with_boxes["name"].to_numpy(str), dtype="str"),
        **{column: rounded[:, k] for k, column in enumerate(XYXY)},
        "class": pd.Series(label.fillna(fallback_class).to_numpy(str), dtype="str"),
    })
    counts = {
        "rows": len(frame), "images": int(frame["NAME"].nunique()),
        "rows_fallback_class": int(fallback.sum()),
        "box_sources": {str(k): int(v) for k, v in with_boxes["source"].value_counts().items()},
        "class_counts": {str(k): int(v) for k, v in frame["class"].value_counts().items()},
    }
    return frame, counts


@tracked
def build_submission(*, test: str, test_boxes: str, classes: str, weights: str, submission: str,
                     truth: str | list[str]) -> dict[str, Any]:
    """Rule entry: assemble, validate strictly, write; score against the test truth when given
    (`truth`: the test truth CSV, or an empty list when it is unknown)."""
    truth_csv = truth if isinstance(truth, str) else (str(truth[0]) if len(truth) else None)
    test_table = tables.read_table(test, tables.INGEST_TEST)
    fallback = json.loads(Path(weights).read_text())["fallback_class"]
    frame, summary = assemble(test_table, tables.read_table(test_boxes, tables.TEST_BOXES),
                              tables.read_table(classes, tables.ENSEMBLE_CLASSES), fallback_class=fallback)
    metric.validate_submission(test_table.rename(columns={"name": "NAME"})[["trustii_id", "NAME"]], frame,
                               strict=True)
    tables.write_table(frame, submission, tables.SUBMISSION)
    summary["validated"] = True
    if truth_csv:
        result = metric.score_files(truth_csv, submission)  # the written file, as a user would score it
        summary.update({"score": round(result.score, 6), "mean_rescaled_giou": round(result.mean_rescaled_giou, 6),
                        "macro_f1": round(result.macro_f1, 6)})
        LOGGER.info("submission score %.4f (GIoU %.4f, F1 %.4f)", result.score, result.mean_rescaled_giou,
                    result.macro_f1)
    return summary
