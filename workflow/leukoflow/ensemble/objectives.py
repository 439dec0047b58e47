"""What the ensemble search maximises on the out-of-fold predictions.

* `crop_f1`: macro F1 of the blended class over every OOF crop (the winner's objective), or
* `metric`: the official challenge score (`leukoflow.metric.score`) of the detector-1 OOF boxes
  carrying the blended classes: each OOF box takes the class of the crop whose window overlaps it
  most (same image, IoU of the box grown by the crop margin with the crop window).

Both score the rows of a boolean mask when given one (the nested estimate scores held-out folds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib
from leukoflow.constants import CLASSES
from leukoflow.ensemble.inputs import EnsembleInputs

CLASS_CODES = np.array(CLASSES, dtype=object)
OBJECTIVES = ("metric", "crop_f1")


class CropF1:
    """Macro F1 of the predicted class over the crops with a known class (the winner's CV)."""

    name = "crop_f1"

    def __init__(self, inputs: EnsembleInputs):
        self.truth = inputs.truth
        self.known = inputs.truth >= 0

    def __call__(self, class_idx: np.ndarray, rows: np.ndarray | None = None) -> float:
        from sklearn.metrics import f1_score

        mask = self.known if rows is None else self.known & rows
        return float(f1_score(self.truth[mask], class_idx[mask], average="macro", zero_division=0))


class Remembered:
    """An objective that scores each distinct (classes, rows) once and then answers from memory.

    The offset grid re-proposes the same classes over and over (most offsets move no argmax) and
    the search's trials often do too, while one official-metric call costs tens of ms. The
    objectives are pure functions of their arguments, so the values are exactly the computed ones.
    """

    def __init__(self, objective: Callable[..., float]):
        self.objective = objective
        self.name = getattr(objective, "name", "objective")
        self.values: dict[tuple[str, str | None], float] = {}

    def __call__(self, class_idx: np.ndarray, rows: np.ndarray | None = None) -> float:
        relevant = getattr(self.objective, "relevant", None)
        classes = relevant(class_idx) if relevant else class_idx
        key = (_digest(classes), None if rows is None else _digest(rows))
        if key not in self.values:
            self.values[key] = self.objective(class_idx, rows)
        return self.values[key]


def _digest(array: np.ndarray) -> str:
    """Content key of an array (shape and dtype included); short, so memory does not grow with the crops."""
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.blake2b(header + array.tobytes(), digest_size=16).hexdigest()


class OfficialMetric:
    """The challenge score of fixed OOF boxes whose class comes from a crop row each (module docstring).

    `skeleton` is a submission without classes plus a `crop_row` column (index into the crops);
    `truth` the matching ground truth in the metric's format.
    """

    name = "metric"

    def __init__(self, truth: pd.DataFrame, skeleton: pd.DataFrame, names: np.ndarray):
        self.truth = truth
        self.skeleton = skeleton
        self.crop_row = skeleton["crop_row"].to_numpy()
        self.names = names
        self._scorers: dict[str | None, tuple[np.ndarray, Any]] = {}

    def relevant(self, class_idx: np.ndarray) -> np.ndarray:
        """The classes the score depends on: those of the crops answering an OOF box."""
        return class_idx[self.crop_row]

    def submission(self, class_idx: np.ndarray) -> pd.DataFrame:
        frame = self.skeleton.drop(columns="crop_row")
        frame["class"] = CLASS_CODES[class_idx[self.crop_row]]
        return frame

    def _scope(self, rows: np.ndarray | None) -> tuple[pd.DataFrame, np.ndarray]:
        """(truth, positions of the skeleton rows) of the images of `rows` (all when None)."""
        if rows is None:
            return self.truth, np.arange(len(self.skeleton))
        keep = set(self.names[rows])
        return self.truth[self.truth["NAME"].isin(keep)], np.flatnonzero(self.skeleton["NAME"].isin(keep).to_numpy())

    def result(self, class_idx: np.ndarray, rows: np.ndarray | None = None):
        from leukoflow import metric

        truth, positions = self._scope(rows)
        return metric.score(truth, self.submission(class_idx).iloc[positions])

    def __call__(self, class_idx: np.ndarray, rows: np.ndarray | None = None) -> float:
        positions, scorer = self._fixed_scorer(rows)
        if scorer is None:
            return self.result(class_idx, rows).score
        return scorer.score(CLASS_CODES[class_idx[self.crop_row[positions]]])

    def _fixed_scorer(self, rows: np.ndarray | None):
        """The boxes never change between calls, so they are matched once per scope
        (`metric.fixed_box_scorer`): about 40x cheaper than a full `metric.score` on the demo."""
        from leukoflow import metric

        key = None if rows is None else _digest(rows)
        if key not in self._scorers:
            truth, positions = self._scope(rows)
            skeleton = self.skeleton.drop(columns="crop_row").iloc[positions].assign(**{"class": ""})
            self._scorers[key] = (positions, metric.fixed_box_scorer(truth, skeleton))
        return self._scorers[key]


def official_metric(inputs: EnsembleInputs, oof_boxes: pd.DataFrame, crops: pd.DataFrame,
                    boxes: pd.DataFrame, *, margin: float) -> tuple[OfficialMetric, dict[str, int]]:
    """The `metric` objective from detector-1 OOF boxes (OOF_BOXES), the crop table and the curated boxes.

    Images scored: those with OOF boxes and crops in `inputs` (the others are counted in the
    returned figures, not scored). Each OOF box, grown by `margin`,
    takes the crop (of the same image) whose window has the highest IoU with it; the k-th box of an
    image answers the image's k-th truth row (pairing does not change the score, docs/method.md §10.3).
    """
    row_of_crop = pd.Series(np.arange(len(inputs)), index=inputs.ids)
    windows = crops[crops["crop_id"].isin(row_of_crop.index)].set_index("crop_id")
    with_crops = set(windows["name"])
    fitted = oof_boxes[oof_boxes["name"].isin(with_crops)]
    scope = sorted(set(fitted["name"]))
    truth = boxes_lib.truth_table(boxes[boxes["name"].isin(scope)])
    crop_rows = []
    crops_by_name = dict(tuple(windows.assign(crop_row=row_of_crop.loc[windows.index].to_numpy()).groupby("name")))
    fitted_sorted = fitted.sort_values(["name", "rank"], kind="stable")
    for name, image_boxes in fitted_sorted.groupby("name", sort=True):
        candidates = crops_by_name[name]
        grown = image_boxes[["x1", "y1", "x2", "y2"]].to_numpy(float) + np.array([-margin, -margin, margin, margin])
        overlap = boxes_lib.iou_matrix(grown, candidates[["x1", "y1", "x2", "y2"]].to_numpy(float))
        crop_rows.append(candidates["crop_row"].to_numpy()[overlap.argmax(axis=1)])
    fitted_sorted = fitted_sorted.assign(crop_row=np.concatenate(crop_rows) if crop_rows else np.zeros(0, int))
    ranked = truth.assign(rank=truth.groupby("NAME").cumcount())
    skeleton = ranked[["trustii_id", "NAME", "rank"]].merge(
        fitted_sorted.rename(columns={"name": "NAME"})[["NAME", "rank", "x1", "y1", "x2", "y2", "crop_row"]],
        on=["NAME", "rank"], how="left")
    unanswered = skeleton["crop_row"].isna()
    if unanswered.any():
        raise ValueError(f"ensemble metric objective: {int(unanswered.sum())} truth row(s) have no OOF box, "
                         f"e.g. image {skeleton.loc[unanswered, 'NAME'].iloc[0]!r}")
    skeleton = skeleton.drop(columns="rank").astype({"crop_row": "int64"})
    counts = {"metric_images": len(scope), "metric_cells": len(truth),
              "metric_images_without_oof_boxes": len(set(inputs.names) - set(oof_boxes["name"])),
              "metric_images_without_crops": len(set(oof_boxes["name"]) - with_crops)}
    return OfficialMetric(truth, skeleton, inputs.names), counts

