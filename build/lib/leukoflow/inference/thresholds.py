"""Threshold mode: the cells of an image without a known count, and the OOF-calibrated threshold.

Used by `leukoflow predict` (no expected counts) and by the bundle export, which picks the
threshold that gives the right cell count on most out-of-fold images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib

XYXY = ["x1", "y1", "x2", "y2"]


def threshold_boxes(raw: pd.DataFrame, width: int, height: int, *, min_score: float, nms_iou: float,
                    wbf_iou: float, wbf_skip: float) -> tuple[np.ndarray, np.ndarray]:
    """One image's cells without a known count: WBF of the boxes >= min_score, NMS, round and clip.

    The threshold applies before the fusion: WBF's fused score is the mean member score, so the
    many near-zero boxes a conf-0.001 detector leaves around a cell would drag it down.
    """
    fused_norm, scores = boxes_lib.weighted_boxes_fusion(
        boxes_lib.normalise(raw[XYXY].to_numpy(), width, height), raw["score"].to_numpy(),
        iou_threshold=wbf_iou, skip_threshold=max(wbf_skip, min_score))
    fused = boxes_lib.denormalise(fused_norm, width, height)
    keep = boxes_lib.nms(fused, scores, nms_iou)
    return boxes_lib.round_and_clip(fused[keep], width, height), scores[keep]


def calibrate_min_score(raw: pd.DataFrame, sizes: pd.DataFrame, counts: pd.Series, *, candidates: Sequence[float],
                        nms_iou: float, wbf_iou: float, wbf_skip: float) -> dict[str, Any]:
    """The candidate threshold whose threshold-mode cell count matches most out-of-fold images.

    Args:
        raw: detector-1 OOF raw boxes (DETECTIONS: each image predicted by the fold model that never saw it).
        sizes: name, width, height of the images; counts: annotated cells per image NAME.

    Returns:
        {"min_score": best, "exact_count_share": {candidate: share}} (ties: the lower threshold).
    """
    raw_by_name = dict(tuple(raw.groupby("name")))
    size = sizes.set_index("name")
    shares = {}
    for candidate in sorted(candidates):
        exact = [len(threshold_boxes(raw_by_name.get(name, raw.iloc[:0]), int(size.at[name, "width"]),
                                     int(size.at[name, "height"]), min_score=candidate, nms_iou=nms_iou,
                                     wbf_iou=wbf_iou, wbf_skip=wbf_skip)[1]) == n for name, n in counts.items()]
        shares[float(candidate)] = round(float(np.mean(exact)), 6) if exact else 0.0
    best = max(shares, key=lambda c: (shares[c], -c))
    return {"min_score": best, "exact_count_share": shares}
