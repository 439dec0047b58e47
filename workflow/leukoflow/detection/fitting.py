"""Detector output fitted to the challenge format: OOF boxes cut/padded to each image's known
cell count (docs/method.md §4.2 `fit_format`), scored like the challenge, and the test boxes of every
fold model fused (WBF) and fitted the same way. No torch here beyond the box operations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib
from leukoflow import tables
from leukoflow.engine.runtime import tracked


def fit_image(raw: pd.DataFrame, n: int, width: int, height: int) -> pd.DataFrame:
    """One image's boxes rounded, clipped and cut/padded to exactly n (docs/method.md §4.2 `fit_format`)."""
    xyxy = boxes_lib.round_and_clip(raw[["x1", "y1", "x2", "y2"]].to_numpy(), width, height)
    kept, scores, padded = boxes_lib.top_n_with_padding(xyxy, raw["score"].to_numpy(), n, width, height)
    frame = pd.DataFrame(kept, columns=["x1", "y1", "x2", "y2"])
    frame.insert(0, "rank", np.arange(n, dtype=np.int64))
    frame["score"] = scores
    frame["padded"] = padded
    return frame


def fit_oof_boxes(raw: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame, folds: pd.DataFrame,
                  detector: str) -> pd.DataFrame:
    """OOF_BOXES: every fold image's raw OOF boxes fitted to its annotated box count."""
    counts = boxes.groupby("name").size()
    size = images.set_index("name")[["width", "height"]]
    raw_by_name = dict(tuple(raw.groupby("name")))
    empty = raw.iloc[:0]
    frames = []
    for name, fold in folds[["name", "fold"]].itertuples(index=False):
        n = int(counts.get(name, 0))
        if n == 0:
            continue
        fitted = fit_image(raw_by_name.get(name, empty), n, int(size.at[name, "width"]), int(size.at[name, "height"]))
        fitted.insert(0, "name", name)
        fitted.insert(0, "fold", int(fold))
        frames.append(fitted)
    table = pd.concat(frames, ignore_index=True) if frames else tables.empty_frame(tables.OOF_BOXES)
    table.insert(0, "detector", detector)
    return _typed(table, tables.OOF_BOXES)


def _typed(frame: pd.DataFrame, schema: tables.Schema) -> pd.DataFrame:
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    frame = frame[schema.column_names]
    return frame.astype({column.name: kinds[column.dtype] for column in schema.columns})


def evaluate_oof(fitted: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame) -> dict[str, Any]:
    """Mean rescaled GIoU (official matching) of the OOF boxes and of the full-image baseline, per fold too."""
    from leukoflow import metric

    truth = boxes_lib.truth_table(boxes[boxes["name"].isin(set(fitted["name"]))])
    oof = metric.score(truth, boxes_lib.as_submission(fitted, truth)).per_row
    baseline = metric.score(truth, boxes_lib.full_image_submission(truth, images)).per_row
    fold_of = fitted.drop_duplicates("name").set_index("name")["fold"]
    per_fold = oof.groupby(oof["NAME"].map(fold_of))["rescaled_giou"].mean()
    return {
        "oof_mean_rescaled_giou": float(oof["rescaled_giou"].mean()),
        "full_image_baseline_giou": float(baseline["rescaled_giou"].mean()),
        "oof_gain_over_baseline": float(oof["rescaled_giou"].mean() - baseline["rescaled_giou"].mean()),
        "per_fold_mean_rescaled_giou": {str(int(k)): float(v) for k, v in per_fold.items()},
        "cells": int(len(oof)),
        "padded_boxes": int(fitted["padded"].sum()),
        "giou_histogram": np.histogram(oof["giou"].to_numpy(), bins=10, range=(-1, 1))[0].tolist(),
    }


# ----------------------------------------------------------------------------- test boxes

def fuse_test_boxes(raw: pd.DataFrame, test: pd.DataFrame, images: pd.DataFrame, *, wbf_iou: float,
                    wbf_skip: float) -> pd.DataFrame:
    """TEST_BOXES: per image, every fold's boxes fused as one list (WBF), top-N by the test.csv count.

    Test rows whose image is not a kept test image (quarantined, unreadable) get the full-image box
    of the size recorded (a 2x2 box when unknown) with source 'unreadable'.
    """
    size = images.set_index("name")[["width", "height"]]
    usable = set(images.loc[(images["split"] == "test") & images["keep"], "name"])
    raw_by_name = dict(tuple(raw.groupby("name")))
    frames = []
    for name, rows in test.groupby("name", sort=False):
        width, height = (int(v) for v in size.loc[name]) if name in size.index else (0, 0)
        fitted = _fused_for_image(raw_by_name.get(name, raw.iloc[:0]), len(rows), width, height,
                                  wbf_iou, wbf_skip) if name in usable else None
        frames.append(_pair_with_rows(rows, fitted, width, height))
    table = pd.concat(frames).sort_values("row", kind="stable") if frames else tables.empty_frame(tables.TEST_BOXES)
    return _typed(table.reset_index(drop=True), tables.TEST_BOXES)


def _fused_for_image(raw: pd.DataFrame, n: int, width: int, height: int, wbf_iou: float,
                     wbf_skip: float) -> pd.DataFrame:
    fused_norm, scores = boxes_lib.weighted_boxes_fusion(
        boxes_lib.normalise(raw[["x1", "y1", "x2", "y2"]].to_numpy(), width, height), raw["score"].to_numpy(),
        iou_threshold=wbf_iou, skip_threshold=wbf_skip)
    fused = pd.DataFrame(boxes_lib.denormalise(fused_norm, width, height), columns=["x1", "y1", "x2", "y2"])
    fused["score"] = scores
    return fit_image(fused, n, width, height)


def _pair_with_rows(rows: pd.DataFrame, fitted: pd.DataFrame | None, width: int, height: int) -> pd.DataFrame:
    out = rows[["row", "trustii_id", "name"]].reset_index(drop=True)
    if fitted is None:
        box = boxes_lib.full_image_box(max(width, 2), max(height, 2))
        return out.assign(x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=0.0, source="unreadable")
    out[["x1", "y1", "x2", "y2", "score"]] = fitted[["x1", "y1", "x2", "y2", "score"]].to_numpy()
    out["source"] = np.where(fitted["padded"].to_numpy(), "padded", "detected")
    return out



@tracked
def fit_oof(*, raw: list[str], training: list[str], images: str, boxes: str, folds: str, detector: str,
            oof: str) -> dict[str, Any]:
    """Rule entry: OOF boxes fitted to the cell counts, scored against the full-image baseline."""
    from leukoflow.engine.runtime import read_json

    box_table = tables.read_table(boxes, tables.CURATED_BOXES)
    image_table = tables.read_table(images, tables.CURATED_IMAGES)
    detections = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in raw], ignore_index=True)
    fitted = fit_oof_boxes(detections, box_table, image_table, tables.read_table(folds, tables.FOLDS), detector)
    tables.write_table(fitted, oof, tables.OOF_BOXES)
    trained = [read_json(path) for path in training]
    summary = evaluate_oof(fitted, box_table, image_table)
    summary["per_fold"] = {str(k): {"map50": t["map50"], "map50_95": t["map50_95"],
                                    "mean_rescaled_giou": summary["per_fold_mean_rescaled_giou"].get(str(k)),
                                    "train_seconds": t["train_seconds"], "resumed_from_epoch": t["resumed_from_epoch"],
                                    "history": t["history"]}
                           for k, t in enumerate(trained)}
    summary["detector"] = detector
    return summary
