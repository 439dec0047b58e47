"""Noisy-box search for detector 2: the winner's hand cleaning made automatic (METHOD.md §5, "further" 2).

The winner removed 28 images by hand, picked while looking at detector-1 out-of-fold output
("low confidence probabilities + bad labels + too small boxes"): red cells boxed as white cells,
boxes far too large, spurious boxes. We flag the same situations from the detector-1 OOF boxes:

* `unconfirmed_box`: an annotation that no detection confirms (no detection overlapping it at
  IoU >= `match_iou` reaches `confirm_score`): likely not a white cell, or a wrong/oversized box;
* `unannotated_cell`: a confident detection (score >= `detect_score`) that overlaps no annotation
  (best IoU < `unmatched_iou`): likely a white cell left unannotated;
* `count_mismatch`: the number of confident detections differs from the number of annotations.

Rule for detector 2: an image is left out of its training and validation when it carries a flag
whose reason is in `exclude_reasons` (default: the first two; the count mismatch alone is too
often a detector miss on a touching pair). On the synthetic data the flags are scored against the
injected defects the detector can see (`VISIBLE_DEFECTS`); wrong class labels are the classifiers'
business.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from leukoflow import boxes as boxes_lib
from leukoflow import tables

REASONS = ("unconfirmed_box", "unannotated_cell", "count_mismatch")
# defect kind (synthesize) -> the flag that should catch it
VISIBLE_DEFECTS = {
    "red_cell_box": "unconfirmed_box",
    "oversized_box": "unconfirmed_box",
    "unannotated_border_cell": "unannotated_cell",
}
XYXY = ["x1", "y1", "x2", "y2"]


def flag_image(truth: pd.DataFrame, detections: pd.DataFrame, *, confirm_score: float, match_iou: float,
               detect_score: float, unmatched_iou: float) -> list[dict[str, Any]]:
    """Flags of one image. truth: its CURATED_BOXES rows; detections: its raw OOF boxes (DETECTIONS)."""
    truth_xyxy, det_xyxy = truth[XYXY].to_numpy(float), detections[XYXY].to_numpy(float)
    scores = detections["score"].to_numpy(float)
    confident = scores >= detect_score
    iou = boxes_lib.iou_matrix(truth_xyxy, det_xyxy)
    flags = []
    for index, row in enumerate(truth["row"].to_numpy()):
        overlapping = iou[index] >= match_iou
        best_score = float(scores[overlapping].max()) if overlapping.any() else 0.0
        if best_score < confirm_score:
            best_iou = float(iou[index, confident].max()) if confident.any() else 0.0
            flags.append(_flag("unconfirmed_box", int(row), truth_xyxy[index], best_iou, best_score))
    for index in np.flatnonzero(confident):
        best_iou = float(iou[:, index].max()) if len(truth_xyxy) else 0.0
        if best_iou < unmatched_iou:
            flags.append(_flag("unannotated_cell", -1, det_xyxy[index], best_iou, float(scores[index])))
    if int(confident.sum()) != len(truth_xyxy):
        flags.append(_flag("count_mismatch", -1, np.full(4, np.nan), np.nan, np.nan))
    return flags


def _flag(reason: str, row: int, xyxy: np.ndarray, iou: float, score: float) -> dict[str, Any]:
    return {"reason": reason, "row": row, "x1": xyxy[0], "y1": xyxy[1], "x2": xyxy[2], "y2": xyxy[3],
            "iou": iou, "score": score}


def find_noisy_boxes(detections: pd.DataFrame, boxes: pd.DataFrame, folds: pd.DataFrame, *,
                     confirm_score: float, match_iou: float, detect_score: float, unmatched_iou: float,
                     exclude_reasons: Iterable[str], max_excluded_fraction: float) -> pd.DataFrame:
    """NOISY_FLAGS over every fold image that has OOF output (see the module docstring for the rules).

    At most `max_excluded_fraction` of the images are excluded, those with the strongest evidence
    first (see `exclusion_priority`): an undertrained detector flags nearly everything, and
    detector 2 must keep a training set.
    """
    unknown = set(exclude_reasons) - set(REASONS)
    if unknown:
        raise ValueError(f"noisy.exclude_reasons: unknown reason(s) {sorted(unknown)}; known: {REASONS}")
    truth_by_name = dict(tuple(boxes.groupby("name")))
    det_by_name = dict(tuple(detections.groupby("name")))
    records = []
    for name, fold in folds[["name", "fold"]].itertuples(index=False):
        truth = truth_by_name.get(name, boxes.iloc[:0])
        found = det_by_name.get(name, detections.iloc[:0])
        n_detected = int((found["score"] >= detect_score).sum())
        for flag in flag_image(truth, found, confirm_score=confirm_score, match_iou=match_iou,
                               detect_score=detect_score, unmatched_iou=unmatched_iou):
            records.append({"name": name, "fold": int(fold), **flag, "n_annotated": len(truth),
                            "n_detected": n_detected})
    frame = pd.DataFrame.from_records(records, columns=[c for c in tables.NOISY_FLAGS.column_names if c != "excluded"])
    candidates = exclusion_priority(frame[frame["reason"].isin(set(exclude_reasons))])
    cap = int(np.floor(max_excluded_fraction * len(folds)))
    frame["excluded"] = frame["name"].isin(set(candidates.index[:cap]))
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    return frame.astype({c.name: kinds[c.dtype] for c in tables.NOISY_FLAGS.columns})


def exclusion_priority(flags: pd.DataFrame) -> pd.Series:
    """Evidence per flagged image, strongest first (ties by name).

    An unconfirmed annotation weighs 1 - the best confidence found at it, halved when the detector
    is confident nowhere on the image (then it more likely missed a real cell than the annotation
    is wrong); an unannotated cell weighs its detection confidence; an image takes its strongest flag.
    """
    detector_silent = np.where(flags["n_detected"].to_numpy() == 0, 0.5, 1.0)
    evidence = np.where(flags["reason"] == "unconfirmed_box", (1.0 - flags["score"]) * detector_silent,
                        flags["score"])
    strongest = pd.Series(np.nan_to_num(evidence), index=flags["name"].to_numpy()).groupby(level=0).max()
    order = np.lexsort((strongest.index.to_numpy(), -strongest.to_numpy()))
    return strongest.iloc[order]


def excluded_images(flags: pd.DataFrame) -> list[str]:
    """Sorted names that detector 2 leaves out."""
    return sorted(set(flags.loc[flags["excluded"], "name"]))


def score_against_defects(flags: pd.DataFrame, defects: pd.DataFrame, evaluated: Iterable[str]) -> dict[str, Any]:
    """Image-level precision/recall of the exclusion list against the visible injected defects.

    Args:
        flags: NOISY_FLAGS.
        defects: DEFECTS (synthetic ground truth).
        evaluated: names that had OOF output (defects on removed or test images cannot be found).
    """
    evaluated = set(evaluated)
    visible = defects[defects["kind"].isin(VISIBLE_DEFECTS) & defects["name"].isin(evaluated)]
    truth, flagged = set(visible["name"]), set(excluded_images(flags))
    hits = truth & flagged
    per_kind = {}
    for kind, group in visible.groupby("kind"):
        names = set(group["name"])
        caught = names & set(flags.loc[flags["reason"] == VISIBLE_DEFECTS[kind], "name"])
        per_kind[kind] = {"defects": len(names), "flagged_by_rule": len(caught),
                          "recall": len(caught) / len(names)}
    return {
        "noisy_precision": len(hits) / len(flagged) if flagged else None,
        "noisy_recall": len(hits) / len(truth) if truth else None,
        "noisy_true_positive_images": len(hits),
        "noisy_defect_images": len(truth),
        "noisy_per_kind": per_kind,
    }


def summarise_flags(flags: pd.DataFrame) -> dict[str, Any]:
    return {
        "noisy_flags": {reason: int((flags["reason"] == reason).sum()) for reason in REASONS},
        "noisy_flagged_images": int(flags["name"].nunique()),
        "noisy_excluded_images": len(excluded_images(flags)),
        "noisy_excluded_boxes_rows": int(((flags["reason"] == "unconfirmed_box") & flags["excluded"]).sum()),
    }


def write_galleries(flags: pd.DataFrame, images: pd.DataFrame, out_dir: str | Path, *, max_tiles: int,
                    tile: int, boxes: pd.DataFrame) -> list[str]:
    """One PNG per reason: thumbnails of flagged images, annotations in green, the flagged box in red."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path_of = images.set_index("name")["path"]
    written = []
    for reason in REASONS:
        chosen = flags[flags["reason"] == reason].sort_values(["score", "name"], na_position="last").head(max_tiles)
        tiles = [_thumbnail(path_of[row.name], boxes[boxes["name"] == row.name][XYXY].to_numpy(float),
                            np.array([row.x1, row.y1, row.x2, row.y2], float), tile)
                 for row in chosen.itertuples(index=False)]
        target = out_dir / f"{reason}.png"
        _grid(tiles, tile).save(target)
        written.append(str(target))
    return written


def _thumbnail(path: str, annotations: np.ndarray, flagged: np.ndarray, tile: int) -> Image.Image:
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, image.width // 100)
    for box in annotations:
        draw.rectangle(box.tolist(), outline=(0, 160, 0), width=width)
    if np.isfinite(flagged).all():
        draw.rectangle(flagged.tolist(), outline=(220, 0, 0), width=width)
    image.thumbnail((tile, tile))
    return image


def _grid(tiles: list[Image.Image], tile: int, columns: int = 6) -> Image.Image:
    """Tiles on a white sheet; a single blank tile when there is nothing to show."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (tile * min(columns, max(len(tiles), 1)), tile * rows), "white")
    for index, image in enumerate(tiles):
        sheet.paste(image, ((index % columns) * tile, (index // columns) * tile))
    return sheet


def flag_noisy_boxes(*, raw: list[str], images: str, boxes: str, folds: str, defects: list[str], flags: str,
                     gallery: str, rules: dict[str, Any], gallery_tiles: int, tile_px: int) -> dict[str, Any]:
    """Rule entry: flags from detector-1 OOF output, audit table, galleries, defect scores (synthetic)."""
    detections = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in raw], ignore_index=True)
    box_table = tables.read_table(boxes, tables.CURATED_BOXES)
    fold_table = tables.read_table(folds, tables.FOLDS)
    found = find_noisy_boxes(detections, box_table, fold_table, **rules)
    tables.write_table(found, flags, tables.NOISY_FLAGS)
    write_galleries(found, tables.read_table(images, tables.CURATED_IMAGES), gallery, max_tiles=gallery_tiles,
                    tile=tile_px, boxes=box_table)
    summary = summarise_flags(found)
    if defects:
        summary.update(score_against_defects(found, tables.read_table(defects[0], tables.DEFECTS),
                                             fold_table["name"]))
    return summary
