"""Classifier crops: detected boxes + margin, labelled from the ground truth (METHOD.md §7.2, §4.3 step 5).

Training crops are rebuilt as METHOD §7.2 reconstructs the missing notebook: each fold model of
the crop detector (detector 2) predicts its validation images, the boxes are fitted to the known
cell count (top-N, full-image padding), every ground-truth box takes the fitted box of highest
GIoU, and that *predicted* box grown by `margin` px and clipped to the image is the crop, with the
ground-truth class. Several ground-truth boxes may share one predicted box; none is dropped
(the winner dropped 389 of 52,586 by an unknown rule). Test crops are the test boxes grown the
same way. Pixels are cut and cached per input size by `crop_cache` (classification stage).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib
from leukoflow import tables

XYXY = ["x1", "y1", "x2", "y2"]


def train_crops(fitted: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame, *, margin: int,
                detector: str) -> tuple[pd.DataFrame, np.ndarray]:
    """CROPS rows for every ground-truth box of the images in `fitted` (OOF_BOXES).

    Returns:
        (crop table, GIoU of each crop's predicted box with its ground-truth box).
    """
    size = images.set_index("name")[["width", "height"]]
    fitted_by_name = dict(tuple(fitted.groupby("name")))
    frames, gious = [], []
    for name, truth in boxes[boxes["name"].isin(fitted_by_name)].groupby("name", sort=True):
        truth = truth.sort_values("row", kind="stable")
        predicted = fitted_by_name[name]
        index, giou = boxes_lib.best_giou_match(truth[XYXY].to_numpy(float), predicted[XYXY].to_numpy(float))
        width, height = int(size.at[name, "width"]), int(size.at[name, "height"])
        window = boxes_lib.expand_and_clip(predicted[XYXY].to_numpy(float)[index], margin, width, height)
        frame = pd.DataFrame(window, columns=XYXY)
        frame.insert(0, "crop_id", [f"{name}#{k}" for k in range(len(truth))])
        frame.insert(1, "name", name)
        frame.insert(2, "split", "train")
        frame.insert(3, "fold", int(predicted["fold"].iloc[0]))
        frame["score"] = predicted["score"].to_numpy()[index]
        frame["label"] = truth["label"].to_numpy()
        frame["class_idx"] = truth["class_idx"].to_numpy()
        frame["trustii_id"] = -1
        frame["source"] = f"{detector}_oof"
        frames.append(frame)
        gious.append(giou)
    table = pd.concat(frames, ignore_index=True) if frames else tables.empty_frame(tables.CROPS)
    return _typed(table), np.concatenate(gious) if gious else np.zeros(0)


def test_crops(test_boxes: pd.DataFrame, images: pd.DataFrame, *, margin: int, detector: str) -> pd.DataFrame:
    """CROPS rows for every test box whose image is readable (unreadable rows have no pixels to cut)."""
    size = images.set_index("name")[["width", "height"]]
    usable = test_boxes[test_boxes["source"] != "unreadable"].sort_values("row", kind="stable")
    frames = []
    for name, rows in usable.groupby("name", sort=False):
        width, height = int(size.at[name, "width"]), int(size.at[name, "height"])
        frame = pd.DataFrame(boxes_lib.expand_and_clip(rows[XYXY].to_numpy(float), margin, width, height),
                             columns=XYXY)
        frame.insert(0, "crop_id", [f"{name}#{k}" for k in range(len(rows))])
        frame.insert(1, "name", name)
        frame.insert(2, "split", "test")
        frame.insert(3, "fold", -1)
        frame["score"] = rows["score"].to_numpy()
        frame["label"] = ""
        frame["class_idx"] = -1
        frame["trustii_id"] = rows["trustii_id"].to_numpy()
        frame["source"] = f"{detector}_test"
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else tables.empty_frame(tables.CROPS)
    return _typed(table)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    return frame[tables.CROPS.column_names].astype({c.name: kinds[c.dtype] for c in tables.CROPS.columns})


def summarise(train: pd.DataFrame, test: pd.DataFrame, giou: np.ndarray, n_test_rows: int) -> dict[str, Any]:
    return {
        "n_crops": int(len(train) + len(test)),
        "n_train_crops": int(len(train)),
        "n_test_crops": int(len(test)),
        "test_rows_without_crop": int(n_test_rows - len(test)),
        "train_crop_mean_rescaled_giou": float(((giou + 1) / 2).mean()) if len(giou) else None,
        "train_crops_giou_below_0": int((giou < 0).sum()),
    }


def make_crops(*, oof: str, boxes: str, images: str, test_boxes: str, crops: str, margin: int,
               train_detector: str, test_detector: str) -> dict[str, Any]:
    """Rule entry: the CROPS table (train crops from `train_detector` OOF, test crops from the test boxes)."""
    image_table = tables.read_table(images, tables.CURATED_IMAGES)
    test = tables.read_table(test_boxes, tables.TEST_BOXES)
    train, giou = train_crops(tables.read_table(oof, tables.OOF_BOXES), tables.read_table(boxes, tables.CURATED_BOXES),
                              image_table, margin=margin, detector=train_detector)
    tested = test_crops(test, image_table, margin=margin, detector=test_detector)
    tables.write_table(pd.concat([train, tested], ignore_index=True), crops, tables.CROPS)
    return summarise(train, tested, giou, len(test))
