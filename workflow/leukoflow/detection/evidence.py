"""Evidence against the training boxes from detector-1 out-of-fold output.

Every fold model predicted only images it never trained on, so its boxes are an independent
opinion of each image. Three kinds of evidence come out of them:

* calibration: a raw detector score becomes a probability by isotonic regression fitted per fold
  model on its *other* images, so no image calibrates itself. Two questions, two outcomes: for the
  annotation families, P(the detection confirms a box): matched one-to-one to an annotation at
  IoU >= `match_iou`; for the unannotated-cell family, P(a white cell lies there): the detection
  covers, or lies in, an annotation by at least `unmatched_overlap`. A loose or second box on a cell
  fails the first test but not the second; calibrated on the first, a detection on no annotation
  looked 20-25 % likely to be junk at any score, while in the 3,000-image scenario only 4 of the
  189 such detections above 0.5 lay on defect-free images (BENCHMARKS.md);
* per annotation: its confirmation (best calibrated score at IoU >= `match_iou`), the geometry
  against the best-fitting confident detection on it (IoU, share of the detection inside the
  annotation: an oversized box; share of the annotation inside the detection: an undersized or
  shifted box), its log-area relative to its class (robust z), and how active the detector is on
  the rest of its image (the share of the other annotations it confirms or lays a confident
  detection on: a detector that sees nothing there cannot condemn this box);
* per detection that lies on no annotation and is confidently a cell: its P(a cell lies there),
  whether the image border cuts it, and the image's surplus of confident detections over annotations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from leukoflow import boxes as boxes_lib

XYXY = ["x1", "y1", "x2", "y2"]
ROBUST_SD = 1.4826  # MAD -> standard deviation of a normal distribution
CALIBRATION_SPLITS = 5  # image groups per fold model for the cross-fitted calibration


def intersection_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas, shape (len(a), len(b))."""
    a, b = np.asarray(boxes_a, float).reshape(-1, 1, 4), np.asarray(boxes_b, float).reshape(1, -1, 4)
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    return width * height


def areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 1e-9, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1e-9, None)


def matched_to_annotation(truth_xyxy: np.ndarray, det_xyxy: np.ndarray, scores: np.ndarray,
                          match_iou: float) -> np.ndarray:
    """Greedy one-to-one matching, highest score first (the COCO rule): True where a detection is matched."""
    matched = np.zeros(len(det_xyxy), dtype=bool)
    if not len(truth_xyxy) or not len(det_xyxy):
        return matched
    iou = boxes_lib.iou_matrix(det_xyxy, truth_xyxy)
    free = np.ones(len(truth_xyxy), dtype=bool)
    for index in np.argsort(-scores, kind="stable"):
        candidates = np.where(free, iou[index], -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= match_iou:
            matched[index], free[best] = True, False
    return matched


def _isotonic(scores: np.ndarray, real: np.ndarray) -> IsotonicRegression | None:
    """Monotone map raw score -> P(real cell), or None where the outcomes leave nothing to fit."""
    if not len(real) or real.all() or not real.any():
        return None
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(scores, real)


def calibrate_out_of_fold(detections: pd.DataFrame, outcome: np.ndarray, *,
                          n_splits: int = CALIBRATION_SPLITS) -> np.ndarray:
    """P(outcome) of every detection (row order kept), isotonic regression fitted out of fold.

    Each fold's model has its own score scale (a weak fold model scores junk as high as a strong one
    scores cells), so its scores are calibrated on its own detections, cross-fitted by image: the
    images of a fold are split into `n_splits` groups and each group is mapped by the isotonic fit
    on the others. Where those others hold only one outcome, the other folds' detections calibrate
    it instead; where they do too, the raw score is kept. No image ever calibrates itself.
    `outcome`: one bool per detection (`confirms_a_box` or `lies_on_a_cell`).
    """
    detections = detections.reset_index(drop=True)
    real = np.asarray(outcome, dtype=bool)
    scores, folds = detections["score"].to_numpy(float), detections["fold"].to_numpy()
    images = pd.factorize(detections["name"])[0]
    calibrated = scores.copy()
    for fold in np.unique(folds):
        mine = folds == fold
        pooled = _isotonic(scores[~mine], real[~mine])
        image_ids = np.unique(images[mine])
        for part in np.array_split(image_ids, min(n_splits, len(image_ids))):
            held = mine & np.isin(images, part)
            rest = mine & ~held
            model = _isotonic(scores[rest], real[rest]) or pooled
            if model is not None:
                calibrated[held] = model.predict(scores[held])
    return calibrated


def confirms_a_box(detections: pd.DataFrame, boxes: pd.DataFrame, match_iou: float) -> np.ndarray:
    """Per detection (row order): matched one-to-one to an annotation of its image at IoU >= match_iou."""
    return _per_image(detections, boxes, lambda truth, found: matched_to_annotation(
        truth, found[XYXY].to_numpy(float), found["score"].to_numpy(float), match_iou))


def lies_on_a_cell(detections: pd.DataFrame, boxes: pd.DataFrame, overlap: float) -> np.ndarray:
    """Per detection (row order): it covers, or lies in, an annotation of its image by at least `overlap`
    (share of either box inside the other), the bar below which it counts as on no annotation."""
    return _per_image(detections, boxes, lambda truth, found: (
        _coverage(truth, found[XYXY].to_numpy(float)).max(axis=0, initial=0.0) >= overlap))


def _per_image(detections: pd.DataFrame, boxes: pd.DataFrame, outcome) -> np.ndarray:
    detections = detections.reset_index(drop=True)
    truth_by_name = {name: group[XYXY].to_numpy(float) for name, group in boxes.groupby("name")}
    result = np.zeros(len(detections), dtype=bool)
    for name, group in detections.groupby("name", sort=False):
        result[group.index.to_numpy()] = outcome(truth_by_name.get(name, np.zeros((0, 4))), group)
    return result


def _shares(truth_xyxy: np.ndarray, det_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, share of each detection inside each annotation, share of each annotation inside
    each detection), each (len(truth), len(det))."""
    inter = intersection_matrix(truth_xyxy, det_xyxy)
    return inter, inter / areas(det_xyxy)[None, :], inter / areas(truth_xyxy)[:, None]


def _coverage(truth_xyxy: np.ndarray, det_xyxy: np.ndarray) -> np.ndarray:
    """(len(truth), len(det)): the larger of the shares of either box inside the other, and the IoU."""
    _, det_inside, ann_inside = _shares(truth_xyxy, det_xyxy)
    return np.maximum(np.maximum(det_inside, ann_inside), boxes_lib.iou_matrix(truth_xyxy, det_xyxy))


def robust_z(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(value - group median) / (1.4826 * group MAD); 0 where a group has no spread."""
    z = np.zeros(len(values))
    for group in np.unique(groups):
        member = groups == group
        centre = np.median(values[member])
        spread = ROBUST_SD * np.median(np.abs(values[member] - centre))
        if spread > 0:
            z[member] = (values[member] - centre) / spread
    return z


def image_evidence(truth: pd.DataFrame, detections: pd.DataFrame, *, width: int, height: int,
                   match_iou: float, detect_p: float, unmatched_overlap: float, border_px: float
                   ) -> tuple[list[dict], list[dict]]:
    """Evidence rows of one image: (one per annotation, one per confident detection on no annotation).

    truth: its CURATED_BOXES rows; detections: its OOF boxes with the calibrated columns `p`
    (P(confirms a box)) and `p_cell` (P(a cell lies there)).
    """
    truth_xyxy, det_xyxy = truth[XYXY].to_numpy(float), detections[XYXY].to_numpy(float)
    p, p_cell = detections["p"].to_numpy(float), detections["p_cell"].to_numpy(float)
    iou = boxes_lib.iou_matrix(truth_xyxy, det_xyxy)
    inter, det_inside, ann_inside = _shares(truth_xyxy, det_xyxy)
    confident = p >= detect_p
    confirm = np.where(iou >= match_iou, p[None, :], 0.0).max(axis=1) if len(det_xyxy) else np.zeros(len(truth))
    # a confident detection belongs to the annotation it fits best among those it covers (share of
    # either box inside the other at least `unmatched_overlap`, the bar below which it counts as on
    # no annotation): a neighbour's box that grazes an annotation says nothing about its geometry
    coverage = np.maximum(det_inside, ann_inside)  # IoU never exceeds either share
    owned = (confident[None, :] & (coverage >= unmatched_overlap)
             & (iou >= iou.max(axis=0, initial=0.0)[None, :]) & (inter > 0))
    # the detector is engaged on an annotation when it confirms it or a confident detection of its own
    # lies on it: a badly fitting box shows the detector sees this image as well as a confirmed one does
    engaged = (confirm >= detect_p) | owned.any(axis=1)
    annotations = []
    for index, row in enumerate(truth["row"].to_numpy()):
        others = np.delete(engaged, index)
        mine = owned[index]
        best = int(np.argmax(np.where(mine, iou[index], -1.0))) if mine.any() else -1
        annotations.append({
            "row": int(row), "confirm_p": float(confirm[index]),
            "activity": float(others.mean()) if len(others) else 0.0,
            "geom_iou": float(iou[index, best]) if best >= 0 else np.nan,
            "geom_p": float(p[best]) if best >= 0 else np.nan,
            "det_inside": float(det_inside[index, best]) if best >= 0 else np.nan,
            "ann_inside": float(ann_inside[index, best]) if best >= 0 else np.nan,
        })
    # a detection around an (undersized) annotation covers it as much as one inside an oversized one
    covered = np.maximum(coverage, iou).max(axis=0, initial=0.0)  # `_coverage`, from the matrices at hand
    loose = np.flatnonzero((p_cell >= detect_p) & (covered < unmatched_overlap))
    loose = loose[boxes_lib.nms(det_xyxy[loose], p_cell[loose], match_iou)] if len(loose) else loose
    surplus = int(confident.sum()) - len(truth)
    cells = [{"row": -1, "x1": det_xyxy[k, 0], "y1": det_xyxy[k, 1], "x2": det_xyxy[k, 2], "y2": det_xyxy[k, 3],
              "p": float(p_cell[k]), "covered": float(covered[k]), "surplus": surplus,
              "at_border": bool(det_xyxy[k, 0] <= border_px or det_xyxy[k, 1] <= border_px
                                or det_xyxy[k, 2] >= width - 1 - border_px or det_xyxy[k, 3] >= height - 1 - border_px)}
             for k in loose]
    return annotations, cells


def collect_evidence(detections: pd.DataFrame, boxes: pd.DataFrame, folds: pd.DataFrame, images: pd.DataFrame, *,
                     match_iou: float, detect_p: float, unmatched_overlap: float, border_px: float
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(annotation evidence, unannotated-detection evidence) over every fold image.

    detections: DETECTIONS of every fold of detector 1; boxes: CURATED_BOXES; folds: FOLDS;
    images: CURATED_IMAGES (sizes, for the border feature).
    """
    detections = detections[detections["name"].isin(set(folds["name"]))].reset_index(drop=True)
    detections = detections.assign(
        p=calibrate_out_of_fold(detections, confirms_a_box(detections, boxes, match_iou)),
        p_cell=calibrate_out_of_fold(detections, lies_on_a_cell(detections, boxes, unmatched_overlap)))
    size = images.set_index("name")[["width", "height"]]
    truth_by_name = dict(tuple(boxes.groupby("name")))
    det_by_name = dict(tuple(detections.groupby("name")))
    annotation_rows, cell_rows = [], []
    for name, fold in folds[["name", "fold"]].itertuples(index=False):
        truth = truth_by_name.get(name, boxes.iloc[:0]).sort_values("row", kind="stable")
        found = det_by_name.get(name, detections.iloc[:0])
        annotations, cells = image_evidence(truth, found, width=int(size.at[name, "width"]),
                                            height=int(size.at[name, "height"]), match_iou=match_iou,
                                            detect_p=detect_p, unmatched_overlap=unmatched_overlap,
                                            border_px=border_px)
        n_confident = int((found["p"] >= detect_p).sum())
        for entry in annotations + cells:
            entry.update(name=name, fold=int(fold), n_annotated=len(truth), n_detected=n_confident)
        annotation_rows += annotations
        cell_rows += cells
    annotated = pd.DataFrame(annotation_rows)
    if len(annotated):
        merged = annotated.merge(boxes[["row", "label", *XYXY]], on="row", how="left", validate="one_to_one")
        log_area = np.log(areas(merged[XYXY].to_numpy(float)))
        annotated = merged.assign(area_z=robust_z(log_area, merged["label"].to_numpy()))
    return annotated, pd.DataFrame(cell_rows)
