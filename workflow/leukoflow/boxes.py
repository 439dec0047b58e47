"""Box operations shared by detection, noisy-box flagging, backgrounds and crops (docs/method.md §4.1-§4.3, §7.2).

Boxes are `(N, 4)` arrays in `xyxy` pixel coordinates unless a name says `xyxy_norm`. IoU and GIoU
are numpy transcriptions of `torchvision.ops.box_iou`/`generalized_box_iou` in float64, operation for
operation (the same values; data-preparation jobs need no torch import for them); NMS comes from
`torchvision.ops`. Weighted boxes fusion follows `ensemble_boxes.weighted_boxes_fusion`
(ZFTurbo) for the single case the winner used, every fold's boxes as one list with weight 1 and
`conf_type="avg"` (docs/method.md §4.3 step 2); that package is not a dependency because it imports numba.
Top-N fitting with full-image padding is the winner's `fit_format` (docs/method.md §4.2, §10.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

FULL_IMAGE_SCORE = 0.0  # score of a padding box (docs/method.md §4.2: "full" padding, score 0)


def as_tensor(boxes: np.ndarray) -> "torch.Tensor":
    """(N, 4) float64 tensor; float64 so GIoU ties and rounding match the numpy metric."""
    import torch  # lazily: the report reads the challenge-format helpers below without torch

    return torch.from_numpy(np.array(boxes, dtype=np.float64).reshape(-1, 4))


def giou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise generalized IoU, shape (len(a), len(b)), for valid xyxy boxes."""
    a, b = _as_xyxy(boxes_a), _as_xyxy(boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter, union = _inter_union(a, b)
    hull = np.maximum(np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2]), 0.0)
    hull_area = hull[..., 0] * hull[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union - (hull_area - union) / hull_area


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape (len(a), len(b))."""
    a, b = _as_xyxy(boxes_a), _as_xyxy(boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter, union = _inter_union(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _as_xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _inter_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union areas [len(a), len(b)], in torchvision's order of operations."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    overlap = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0.0)
    inter = overlap[..., 0] * overlap[..., 1]
    return inter, area_a[:, None] + area_b[None, :] - inter


def best_giou_match(truth: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every truth box, the prediction of highest GIoU (the challenge's matching rule, docs/metric.md).

    Returns:
        (index, giou): index into `predictions` (-1 where there is none) and its GIoU (-1 there).
        Ties go to the first prediction, as numpy argmax does in the official scorer.
    """
    if len(predictions) == 0:
        return np.full(len(truth), -1, dtype=np.int64), np.full(len(truth), -1.0)
    giou = giou_matrix(truth, predictions)
    index = giou.argmax(axis=1) if len(truth) else np.zeros(0, dtype=np.int64)
    return index.astype(np.int64), giou[np.arange(len(truth)), index]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by class-agnostic NMS, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    from torchvision import ops

    keep = ops.nms(as_tensor(boxes), torch.as_tensor(np.asarray(scores, dtype=np.float64)), iou_threshold)
    return keep.numpy()


def normalise(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy px -> xyxy_norm clipped to [0, 1] (WBF clips out-of-range values the same way)."""
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale, 0.0, 1.0)


def denormalise(boxes_norm: np.ndarray, width: int, height: int) -> np.ndarray:
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4) * scale


def weighted_boxes_fusion(boxes_norm: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
                          skip_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one list of boxes (all folds together) by weighted boxes fusion, single model, conf "avg".

    Boxes are visited by descending score; each joins the fused box it overlaps most if that IoU is
    above `iou_threshold`, else starts a new cluster. A fused box is the score-weighted mean of its
    members and its score the mean member score (with one model, WBF's rescaling factor is 1).

    Args:
        boxes_norm: (N, 4) xyxy_norm, already clipped to [0, 1].
        scores: (N,) confidences; boxes below `skip_threshold` and zero-area boxes are dropped.

    Returns:
        (fused_boxes_norm (M, 4), fused_scores (M,)), by descending score.
    """
    boxes_norm = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    area = (boxes_norm[:, 2] - boxes_norm[:, 0]) * (boxes_norm[:, 3] - boxes_norm[:, 1])
    usable = (scores >= skip_threshold) & (area > 0)
    boxes_norm, scores = boxes_norm[usable], scores[usable]
    order = np.argsort(-scores, kind="stable")
    members: list[list[int]] = []
    fused = np.zeros((0, 4))
    for index in order:
        overlap = iou_matrix(fused, boxes_norm[index:index + 1])[:, 0] if len(fused) else np.zeros(0)
        if len(overlap) and overlap.max() > iou_threshold:
            cluster = int(overlap.argmax())
            members[cluster].append(index)
            weights = scores[members[cluster]]
            fused[cluster] = weights @ boxes_norm[members[cluster]] / weights.sum()
        else:
            members.append([index])
            fused = np.vstack([fused, boxes_norm[index]])
    fused_scores = np.array([scores[m].mean() for m in members])
    order = np.argsort(-fused_scores, kind="stable")
    return fused[order].reshape(-1, 4), fused_scores[order]


def full_image_box(width: int, height: int) -> np.ndarray:
    """The padding box (0, 0, W-1, H-1) of docs/method.md §12.9; never degenerate, even for a 1-px image."""
    return np.array([0.0, 0.0, max(width - 1, 1), max(height - 1, 1)])


def round_and_clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """np.round (half to even) then clip to [0, W-1] x [0, H-1], as the winner (docs/method.md §4.2, §12.10)."""
    boxes = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    upper = np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float64)
    return np.clip(boxes, 0.0, upper)


def top_n_with_padding(boxes: np.ndarray, scores: np.ndarray, n: int, width: int,
                       height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the n best boxes of one image; pad with full-image boxes when there are fewer.

    Order: score descending, then box/image area ratio descending (docs/method.md §4.3 step 3).

    Returns:
        (boxes (n, 4), scores (n,), padded (n,) bool).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((-area, -scores))[:n]
    missing = n - len(order)
    kept = np.vstack([boxes[order], np.tile(full_image_box(width, height), (missing, 1))])
    kept_scores = np.concatenate([scores[order], np.full(missing, FULL_IMAGE_SCORE)])
    padded = np.concatenate([np.zeros(len(order), dtype=bool), np.ones(missing, dtype=bool)])
    return kept, kept_scores, padded


def expand_and_clip(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Grow boxes by `margin` px per side and clip to the image: the crop window (docs/method.md §4.3 step 5)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([-margin, -margin, margin, margin])
    upper = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(boxes, 0.0, upper)


# ----------------------------------------------------------------------------- challenge format

def truth_table(boxes: pd.DataFrame) -> pd.DataFrame:
    """CURATED_BOXES as metric truth; the train.csv row is the pseudo trustii_id (docs/method.md §4.2)."""
    ordered = boxes.sort_values(["name", "row"], kind="stable")
    return pd.DataFrame({"trustii_id": ordered["row"].to_numpy(), "NAME": ordered["name"].to_numpy(dtype=object),
                         "x1": ordered["x1"].to_numpy(), "y1": ordered["y1"].to_numpy(),
                         "x2": ordered["x2"].to_numpy(), "y2": ordered["y2"].to_numpy(),
                         "class": ordered["label"].to_numpy(dtype=object)})


def as_submission(fitted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Pair the k-th fitted box of an image with its k-th truth id (pairing does not change GIoU, §10.3).

    The class is the truth class: only the GIoU part of the score is meaningful here.
    """
    truth = truth.assign(rank=truth.groupby("NAME").cumcount())
    paired = truth[["trustii_id", "NAME", "class", "rank"]].merge(
        fitted.rename(columns={"name": "NAME"})[["NAME", "rank", "x1", "y1", "x2", "y2"]], on=["NAME", "rank"])
    return paired[["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]]


def full_image_submission(truth: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The trivial baseline: every cell answered with the full-image box."""
    size = images.set_index("name")[["width", "height"]]
    width = size["width"].reindex(truth["NAME"]).to_numpy()
    height = size["height"].reindex(truth["NAME"]).to_numpy()
    return truth.assign(x1=0.0, y1=0.0, x2=np.maximum(width - 1, 1).astype(float),
                        y2=np.maximum(height - 1, 1).astype(float))

