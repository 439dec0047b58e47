"""Classifier crops: detected boxes + margin, labelled from the ground truth (docs/method.md §7.2, §4.3 step 5).

Training crops follow docs/method.md §7.2: each fold model of the crop detector (detector 2) predicts its
validation images, the boxes are fitted to the known cell count (top-N, full-image padding), and
the *predicted* box grown by `margin` px and clipped to the image is the crop, with the
ground-truth class. Unlike the winner, ground-truth and predicted boxes are matched one-to-one
(maximum total GIoU, so no two annotations share a box), and a match below `giou_floor` is cut
from the ground-truth box instead (counted as `crops_below_giou_floor`). Annotations the noisy-box
search condemned (a red cell, a badly placed box) leave the crops. Test crops are the test boxes
grown the same way. Pixels are cut and cached per input size by `crop_cache` (classification stage).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from leukoflow import boxes as boxes_lib
from leukoflow import tables

XYXY = ["x1", "y1", "x2", "y2"]


def match_one_to_one(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each truth box's predicted box under the assignment of maximum total GIoU (index -1, GIoU -1 if none)."""
    index, giou = np.full(len(truth), -1, dtype=np.int64), np.full(len(truth), -1.0)
    if len(truth) and len(predicted):
        matrix = boxes_lib.giou_matrix(truth, predicted)
        rows, columns = linear_sum_assignment(matrix, maximize=True)
        index[rows], giou[rows] = columns, matrix[rows, columns]
    return index, giou


def train_crops(fitted: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame, *, margin: int, giou_floor: float,
                detector: str, drop_rows: Iterable[int] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """CROPS rows for the ground-truth boxes of the images in `fitted` (OOF_BOXES), less `drop_rows`.

    Returns:
        (crop table, GIoU of each kept annotation with its matched predicted box, -1 when unmatched).
    """
    size = images.set_index("name")[["width", "height"]]
    fitted_by_name = dict(tuple(fitted.groupby("name")))
    frames, gious = [], []
    for name, truth in boxes[boxes["name"].isin(fitted_by_name)].groupby("name", sort=True):
        truth = truth.sort_values("row", kind="stable")
        predicted = fitted_by_name[name]
        truth_xyxy, predicted_xyxy = truth[XYXY].to_numpy(float), predicted[XYXY].to_numpy(float)
        index, giou = match_one_to_one(truth_xyxy, predicted_xyxy)
        from_truth = giou < giou_floor
        source = np.where(from_truth[:, None], truth_xyxy, predicted_xyxy[np.clip(index, 0, None)])
        width, height = int(size.at[name, "width"]), int(size.at[name, "height"])
        frame = pd.DataFrame(boxes_lib.expand_and_clip(source, margin, width, height), columns=XYXY)
        frame.insert(0, "crop_id", [f"{name}#{k}" for k in range(len(truth))])
        frame.insert(1, "name", name)
        frame.insert(2, "split", "train")
        frame.insert(3, "fold", int(predicted["fold"].iloc[0]))
        frame["score"] = np.where(from_truth, 1.0, predicted["score"].to_numpy()[np.clip(index, 0, None)])
        frame["label"] = truth["label"].to_numpy()
        frame["class_idx"] = truth["class_idx"].to_numpy()
        frame["trustii_id"] = -1
        frame["source"] = np.where(from_truth, "ground_truth", f"{detector}_oof")
        kept = ~truth["row"].isin(set(drop_rows)).to_numpy()
        frames.append(frame[kept])
        gious.append(giou[kept])
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
        "crops_below_giou_floor": int((train["source"] == "ground_truth").sum()),
    }


def make_crops(*, oof: str, reviewed_boxes: str, images: str, test_boxes: str, noisy: str, crops: str, margin: int,
               giou_floor: float, train_detector: str, test_detector: str) -> dict[str, Any]:
    """Rule entry: the CROPS table (train crops from `train_detector` OOF, test crops from the test boxes)."""
    from leukoflow.detection import noisy as noisy_lib

    image_table = tables.read_table(images, tables.CURATED_IMAGES)
    test = tables.read_table(test_boxes, tables.TEST_BOXES)
    condemned = noisy_lib.flagged_rows(tables.read_table(noisy, tables.NOISY_FLAGS))
    train, giou = train_crops(tables.read_table(oof, tables.OOF_BOXES),
                              tables.read_table(reviewed_boxes, tables.CURATED_BOXES), image_table, margin=margin,
                              giou_floor=giou_floor, detector=train_detector, drop_rows=condemned)
    tested = test_crops(test, image_table, margin=margin, detector=test_detector)
    tables.write_table(pd.concat([train, tested], ignore_index=True), crops, tables.CROPS)
    return {**summarise(train, tested, giou, len(test)), "crops_dropped_noisy_boxes": len(condemned)}
