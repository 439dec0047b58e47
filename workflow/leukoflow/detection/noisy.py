"""Noisy-box search for detector 2: one decision rule per defect family, each with an honest threshold.

The winner removed 28 images by hand after looking at detector-1 out-of-fold output (red cells
boxed as white cells, boxes far too large, spurious boxes). We decide from the evidence of
`evidence` (calibrated detector-1 OOF boxes), one family at a time:

* `unconfirmed_box` (a red cell or debris boxed as a white cell): an annotation on which no
  confident detection lies. Evidence = (1 - its confirmation) x the detector's activity on the rest
  of the image, so a detector that confirms nothing on an image never condemns it;
* `box_geometry` (an oversized, undersized or shifted box): an annotation whose best confident
  detection overlaps it badly. The statistic is the logit of that IoU against a normal null fitted
  robustly (reweighted MCD, `robust_null`) to every such annotation; one-sided p-values; for nested
  boxes the annotation's class-relative size must agree (see `geometry_pvalues`);
* `unannotated_cell`: a detection on no annotation that is confidently a cell; evidence = its
  calibrated P(a cell lies there) x (1 - its overlap with the annotations).

Thresholds: the two posterior families flag every item whose own estimated false-discovery
probability, 1 - evidence, is within `target_fdr` (local fdr); the geometry family flags every item
whose tail-area FDR, pi0 * F0(t) / F(t) with F0 the fitted null, F the empirical distribution and
pi0 Storey's estimate (Storey-BH), is within `target_fdr`. Nothing is filled up to a quota:
`max_excluded_fraction` is only a safety cap (strongest evidence kept) and the summary says whether it bound.
Images with a flag leave detector 2 (training and validation); flagged annotations also leave
the classifier crops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.covariance import MinCovDet

from leukoflow import tables
from leukoflow.detection import evidence as evidence_lib

FAMILIES = ("unconfirmed_box", "box_geometry", "unannotated_cell")
# defect kind (synthesize) -> the family that should catch it
VISIBLE_DEFECTS = {
    "red_cell_box": "unconfirmed_box",
    "oversized_box": "box_geometry",
    "undersized_box": "box_geometry",
    "shifted_box": "box_geometry",
    "unannotated_border_cell": "unannotated_cell",
    "unannotated_cell": "unannotated_cell",
}
# curation clips this kind's box to the border: flags on it are scored as neither hit nor miss
CLIPPED_DEFECT = "out_of_image_box"
XYXY = ["x1", "y1", "x2", "y2"]
LOGIT_CLIP = 0.01  # IoU is clipped to [0.01, 0.99] before the logit
CONTAINED = 0.9  # share of one box inside the other above which the pair counts as nested
STOREY_LAMBDA = 0.5  # p-values above it are taken as clean when estimating the null proportion


def select_by_local_fdr(evidence: np.ndarray, target_fdr: float) -> np.ndarray:
    """Items whose own estimated false-discovery probability, 1 - evidence (evidence read as P(defect)),
    is within target_fdr: Efron's local-fdr rule.

    Every flagged item must be likely enough on its own; a set-average rule (mean 1 - evidence within
    target) spends the margin that near-certain items leave on coin tosses (on a healthy demo run the
    average admitted three weakly confirmed correct boxes at evidence 0.56-0.57 and three unannotated
    detections at 0.60-0.67 that were not cells). The mean over a flagged set is then within target too.
    """
    return np.asarray(evidence, float) >= 1.0 - target_fdr


def robust_null(statistic: np.ndarray) -> tuple[float, float]:
    """(centre, spread) of the clean bulk of a statistic: reweighted minimum covariance determinant.

    Box defects all sit in the low tail, so they pull the median down and widen the MAD (on the demo
    run the MAD scale was 1.2x that of the clean boxes alone, enough to keep every defect below the
    FDR bar). The MCD fits the most concentrated half and then re-estimates on every point that half
    deems consistent, which leaves a one-sided tail out of the scale. Spread 0 where at least half the
    values coincide (the MCD then has a singular support).
    """
    statistic = np.asarray(statistic, float)
    if len(statistic) < 2:
        return (float(statistic[0]) if len(statistic) else 0.0), 0.0
    try:
        fit = MinCovDet(random_state=0).fit(statistic[:, None])
    except ValueError:
        return float(np.median(statistic)), 0.0
    return float(fit.location_[0]), float(np.sqrt(fit.covariance_[0, 0]))


def low_tail_pvalues(statistic: np.ndarray) -> np.ndarray:
    """One-sided p-values of each value under a normal null fitted robustly (`robust_null`); 1 where no spread."""
    statistic = np.asarray(statistic, float)
    if not len(statistic):
        return statistic
    centre, spread = robust_null(statistic)
    if spread <= 0:
        return np.ones(len(statistic))
    return stats.norm.cdf((statistic - centre) / spread)


def geometry_pvalues(annotations: pd.DataFrame) -> np.ndarray:
    """One-sided p-value that an annotation's box is wrong, from its geometry against its best detection.

    A low IoU alone is the test for a shifted box. When one box lies inside the other, the IoU is low
    whether the annotation or the detector is wrong; then the annotation's log-area must also be
    unusual for its class in the same direction (too large when the detection lies inside it, too
    small when it lies inside the detection), and the larger of the two p-values counts (both tests
    must pass, an intersection-union test).
    """
    iou = annotations["geom_iou"].clip(LOGIT_CLIP, 1 - LOGIT_CLIP).to_numpy()
    pvalues = low_tail_pvalues(np.log(iou / (1 - iou)))
    area_z = annotations["area_z"].to_numpy(float)
    oversized = annotations["det_inside"].to_numpy(float) >= CONTAINED
    undersized = annotations["ann_inside"].to_numpy(float) >= CONTAINED
    pvalues = np.where(oversized, np.maximum(pvalues, stats.norm.sf(area_z)), pvalues)
    return np.where(undersized & ~oversized, np.maximum(pvalues, stats.norm.cdf(area_z)), pvalues)


def null_proportion(pvalues: np.ndarray, lam: float = STOREY_LAMBDA) -> float:
    """Storey's estimate of the share of clean items, pi0 = #{p > lam} / ((1 - lam) m), capped at 1."""
    pvalues = np.asarray(pvalues, float)
    if not len(pvalues):
        return 1.0
    return float(min(1.0, np.mean(pvalues > lam) / (1.0 - lam)))


def select_by_tail_fdr(pvalues: np.ndarray, target_fdr: float) -> np.ndarray:
    """Items whose tail-area false-discovery rate, pi0 * m * p_(k) / k made monotone (Storey-BH), is <= target_fdr."""
    pvalues = np.asarray(pvalues, float)
    if not len(pvalues):
        return np.zeros(0, dtype=bool)
    adjusted = stats.false_discovery_control(pvalues, method="bh")
    return null_proportion(pvalues) * adjusted <= target_fdr


def decide(annotations: pd.DataFrame, cells: pd.DataFrame, *, target_fdr: float) -> pd.DataFrame:
    """Flags of every family (columns of NOISY_FLAGS except `fold`'s neighbours `excluded`)."""
    frames = []
    if len(annotations):
        unconfirmed = annotations[annotations["geom_iou"].isna()]
        evidence = ((1.0 - unconfirmed["confirm_p"]) * unconfirmed["activity"]).to_numpy()
        frames.append(_flags(unconfirmed, "unconfirmed_box", evidence, select_by_local_fdr(evidence, target_fdr),
                             iou=np.zeros(len(unconfirmed)), score=unconfirmed["confirm_p"]))
        geometric = annotations[annotations["geom_iou"].notna()]
        pvalues = geometry_pvalues(geometric)
        frames.append(_flags(geometric, "box_geometry", 1.0 - pvalues, select_by_tail_fdr(pvalues, target_fdr),
                             iou=geometric["geom_iou"], score=geometric["geom_p"]))
    if len(cells):
        evidence = (cells["p"] * (1.0 - cells["covered"])).to_numpy()
        frames.append(_flags(cells, "unannotated_cell", evidence, select_by_local_fdr(evidence, target_fdr),
                             iou=cells["covered"], score=cells["p"]))
    flagged = [frame for frame in frames if len(frame)]
    if not flagged:
        return tables.empty_frame(tables.NOISY_FLAGS).drop(columns="excluded")
    return pd.concat(flagged, ignore_index=True)


def _flags(items: pd.DataFrame, family: str, evidence: np.ndarray, selected: np.ndarray, *, iou, score) -> pd.DataFrame:
    optional = {column: items[column].to_numpy() if column in items else np.nan
                for column in ("det_inside", "ann_inside", "area_z")}
    frame = pd.DataFrame({
        "name": items["name"].to_numpy(), "fold": items["fold"].to_numpy(), "reason": family,
        "row": items["row"].to_numpy(), **{c: items[c].to_numpy(float) for c in XYXY},
        "iou": np.asarray(iou, float), "score": np.asarray(score, float), "evidence": np.asarray(evidence, float),
        **optional, "at_border": items["at_border"].to_numpy() if "at_border" in items else False,
        "n_annotated": items["n_annotated"].to_numpy(), "n_detected": items["n_detected"].to_numpy(),
    })
    return frame[np.asarray(selected, bool)]


def find_noisy_boxes(detections: pd.DataFrame, boxes: pd.DataFrame, folds: pd.DataFrame, images: pd.DataFrame, *,
                     match_iou: float, detect_p: float, unmatched_overlap: float, border_px: float,
                     target_fdr: float, max_excluded_fraction: float) -> tuple[pd.DataFrame, bool]:
    """(NOISY_FLAGS over every fold image with OOF output, whether the safety cap bound)."""
    annotations, cells = evidence_lib.collect_evidence(
        detections, boxes, folds, images, match_iou=match_iou, detect_p=detect_p,
        unmatched_overlap=unmatched_overlap, border_px=border_px)
    flags = decide(annotations, cells, target_fdr=target_fdr)
    strongest = flags.groupby("name")["evidence"].max().sort_values(ascending=False, kind="stable")
    cap = int(np.floor(max_excluded_fraction * len(folds)))
    flags["excluded"] = flags["name"].isin(set(strongest.index[:cap]))
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    typed = flags[tables.NOISY_FLAGS.column_names].astype({c.name: kinds[c.dtype] for c in tables.NOISY_FLAGS.columns})
    return typed.sort_values(["reason", "evidence", "name"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True), len(strongest) > cap


def excluded_images(flags: pd.DataFrame) -> list[str]:
    """Sorted names that detector 2 leaves out."""
    return sorted(set(flags.loc[flags["excluded"], "name"]))


def flagged_rows(flags: pd.DataFrame) -> set[int]:
    """Annotation rows (train.csv) condemned by a box family: their classifier crops are dropped."""
    return set(flags.loc[flags["excluded"] & (flags["row"] >= 0), "row"].astype(int))


def clipped_box_flags(flags: pd.DataFrame, defects: pd.DataFrame) -> set[str]:
    """Images whose every exclusion flag lies on a box of an `out_of_image_box` defect.

    Curation clips such a box to the image border, so the box it keeps is still wrong by however
    far the true edge lies inside the image: a flag on it is no false discovery, yet the kind is no
    detector-visible one either (a short overhang leaves a good box). Scoring counts these images
    neither as defects nor as clean.
    """
    rows = set(defects.loc[defects["kind"] == CLIPPED_DEFECT, "row"].astype(int))
    excluded = flags[flags["excluded"]]
    on_clipped = excluded["row"].isin(rows)
    return set(excluded.loc[on_clipped, "name"]) - set(excluded.loc[~on_clipped, "name"])


def score_against_defects(flags: pd.DataFrame, defects: pd.DataFrame, evaluated: Iterable[str]) -> dict[str, Any]:
    """Image-level precision/recall of the exclusion list against the detector-visible injected defects.

    Per kind: recall = share of its images excluded; precision = among the images its family
    flagged that carry this kind or no visible defect at all, the share carrying this kind. Images
    flagged only on a clipped out-of-image box (`clipped_box_flags`) count in neither.
    """
    evaluated = set(evaluated)
    visible = defects[defects["kind"].isin(VISIBLE_DEFECTS) & defects["name"].isin(evaluated)]
    truth = set(visible["name"])
    clipped = clipped_box_flags(flags, defects) - truth
    flagged = set(excluded_images(flags)) - clipped
    by_kind = {}
    for kind, family in VISIBLE_DEFECTS.items():
        names = set(visible.loc[visible["kind"] == kind, "name"])
        by_family = set(flags.loc[flags["excluded"] & (flags["reason"] == family), "name"]) - clipped
        relevant = by_family & (names | (evaluated - truth))
        by_kind[kind] = {"n_true": len(names),
                         "recall": len(names & flagged) / len(names) if names else None,
                         "precision": len(relevant & names) / len(relevant) if relevant else None}
    hits = truth & flagged
    return {
        "noisy_precision": len(hits) / len(flagged) if flagged else None,
        "noisy_recall": len(hits) / len(truth) if truth else None,
        "noisy_true_positive_images": len(hits),
        "noisy_defect_images": len(truth),
        "noisy_clipped_box_images": len(clipped),
        "noisy_by_kind": by_kind,
    }


def cleanlab_flagged_images(detections: pd.DataFrame, boxes: pd.DataFrame, names: Iterable[str]) -> set[str]:
    """Images cleanlab's object-detection label-issue finder flags (for comparison on synthetic truth)."""
    from cleanlab.object_detection.filter import find_label_issues

    names = [name for name in names if name in set(boxes["name"])]
    truth_by_name, det_by_name = dict(tuple(boxes.groupby("name"))), dict(tuple(detections.groupby("name")))
    empty = np.zeros((0, 5))
    labels = [{"bboxes": truth_by_name[n][XYXY].to_numpy(float), "labels": np.zeros(len(truth_by_name[n]), int)}
              for n in names]
    predictions = []
    for name in names:
        found = det_by_name[name][[*XYXY, "score"]].to_numpy(float) if name in det_by_name else empty
        per_class = np.empty(1, dtype=object)
        per_class[0] = found
        predictions.append(per_class)
    issues = find_label_issues(labels, predictions) if names else np.zeros(0, bool)
    return {name for name, issue in zip(names, issues) if issue}


def compare_with_cleanlab(flagged: set[str], defects: pd.DataFrame, evaluated: Iterable[str]) -> dict[str, Any]:
    evaluated = set(evaluated)
    truth = set(defects.loc[defects["kind"].isin(VISIBLE_DEFECTS) & defects["name"].isin(evaluated), "name"])
    return {"flagged_images": len(flagged), "precision": len(flagged & truth) / len(flagged) if flagged else None,
            "recall": len(flagged & truth) / len(truth) if truth else None}


def by_kind_table(by_kind: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The per-kind precision/recall table the report shows."""
    return pd.DataFrame([{"kind": kind, "family": VISIBLE_DEFECTS.get(kind, "label"), **figures}
                         for kind, figures in by_kind.items()], columns=["kind", "family", "n_true", "precision", "recall"])


def summarise_flags(flags: pd.DataFrame, cap_bound: bool) -> dict[str, Any]:
    return {
        "noisy_flags": {family: int((flags["reason"] == family).sum()) for family in FAMILIES},
        "noisy_thresholds": {family: (float(flags.loc[flags["reason"] == family, "evidence"].min())
                                      if (flags["reason"] == family).any() else None) for family in FAMILIES},
        "noisy_flagged_images": int(flags["name"].nunique()),
        "noisy_excluded_images": len(excluded_images(flags)),
        "noisy_excluded_boxes_rows": len(flagged_rows(flags)),
        "noisy_cap_bound": bool(cap_bound),
    }


def flag_noisy_boxes(*, raw: list[str], images: str, boxes: str, folds: str, defects: list[str], flags: str,
                     gallery: str, by_kind: str, evidence: dict[str, Any], decision: dict[str, Any],
                     gallery_settings: dict[str, Any]) -> dict[str, Any]:
    """Rule entry: flags from detector-1 OOF output, galleries, defect scores (synthetic data)."""
    from leukoflow.detection import gallery as gallery_lib

    detections = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in raw], ignore_index=True)
    box_table = tables.read_table(boxes, tables.CURATED_BOXES)
    fold_table = tables.read_table(folds, tables.FOLDS)
    image_table = tables.read_table(images, tables.CURATED_IMAGES)
    found, cap_bound = find_noisy_boxes(detections, box_table, fold_table, image_table, **evidence, **decision)
    tables.write_table(found, flags, tables.NOISY_FLAGS)
    gallery_lib.write_galleries(found, image_table, gallery, FAMILIES, boxes=box_table, **gallery_settings)
    summary = summarise_flags(found, cap_bound)
    scored: dict[str, Any] = {"noisy_by_kind": {}}
    if defects:
        defect_table = tables.read_table(defects[0], tables.DEFECTS)
        scored = score_against_defects(found, defect_table, fold_table["name"])
        scored["noisy_cleanlab_object_detection"] = compare_with_cleanlab(
            cleanlab_flagged_images(detections, box_table, fold_table["name"]), defect_table, fold_table["name"])
    summary.update(scored)
    by_kind_table(scored["noisy_by_kind"]).to_csv(by_kind, index=False)
    return summary
