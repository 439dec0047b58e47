"""Noisy-box rules side by side on the cached tables of one finished run (seconds, no training).

Three image-level exclusion lists from the same detector-1 OOF boxes, scored the same way against
the synthetic defects: ours (`noisy.find_noisy_boxes` with the config's settings), cleanlab's
object-detection `find_label_issues`, and the rule before issue 15 (an annotation no raw score
>= 0.25 confirms at IoU >= 0.5, or a raw score >= 0.3 on no annotation (IoU < 0.1); images ranked by
that evidence and the top 5 % excluded, a quota). Scoring, identical for the three: truth = images
with a detector-visible defect; images whose only box defect is an `out_of_image_box` (clipped by
curation, so still wrong by an unknown amount) count neither as hit nor as false flag; per kind,
recall = share of its images flagged, precision = share of this kind among the flagged images that
carry it or no defect of a box kind. Run from the run's root, e.g.

    cd /tmp/run && PYTHONPATH=$REPO/workflow python $REPO/tests/bench/noise_rules_side_by_side.py \
        --run . --config $REPO/config/config.yaml
"""

from __future__ import annotations

import glob

import numpy as np
import pandas as pd
from noise_audit_cached import finished_run  # the sibling bench script (tests/bench is on sys.path[0])

from leukoflow import boxes as boxes_lib
from leukoflow import tables
from leukoflow.detection import noisy

XYXY = ["x1", "y1", "x2", "y2"]
OLD_RULE = {"confirm_score": 0.25, "match_iou": 0.5, "detect_score": 0.3, "unmatched_iou": 0.1,
            "max_excluded_fraction": 0.05}


def old_rule_flagged(detections: pd.DataFrame, boxes: pd.DataFrame, names: list[str]) -> set[str]:
    """The quota rule of commit 6dd56bc (workflow/leukoflow/noisy.py there), image level."""
    truth_by_name, det_by_name = dict(tuple(boxes.groupby("name"))), dict(tuple(detections.groupby("name")))
    evidence = {}
    for name in names:
        truth = truth_by_name.get(name, boxes.iloc[:0])
        found = det_by_name.get(name, detections.iloc[:0])
        scores = found["score"].to_numpy(float)
        iou = boxes_lib.iou_matrix(truth[XYXY].to_numpy(float), found[XYXY].to_numpy(float))
        confident = scores >= OLD_RULE["detect_score"]
        silent = 0.5 if not confident.any() else 1.0
        items = []
        for index in range(len(truth)):
            overlapping = iou[index] >= OLD_RULE["match_iou"]
            best = float(scores[overlapping].max()) if overlapping.any() else 0.0
            if best < OLD_RULE["confirm_score"]:
                items.append((1.0 - best) * silent)
        for index in np.flatnonzero(confident):
            if (iou[:, index].max() if len(truth) else 0.0) < OLD_RULE["unmatched_iou"]:
                items.append(float(scores[index]))
        if items:
            evidence[name] = max(items)
    ranked = sorted(evidence, key=lambda name: (-evidence[name], name))
    return set(ranked[: int(np.floor(OLD_RULE["max_excluded_fraction"] * len(names)))])


def score(flagged: set[str], defects: pd.DataFrame, evaluated: set[str]) -> dict[str, float | None]:
    visible = defects[defects["kind"].isin(noisy.VISIBLE_DEFECTS) & defects["name"].isin(evaluated)]
    truth = set(visible["name"])
    neutral = set(defects.loc[defects["kind"] == noisy.CLIPPED_DEFECT, "name"]) - truth
    clean = evaluated - truth - neutral
    scored = flagged - neutral
    figures: dict[str, float | None] = {
        "flagged": len(scored), "precision": len(scored & truth) / len(scored) if scored else None,
        "recall": len(scored & truth) / len(truth) if truth else None}
    for kind in noisy.VISIBLE_DEFECTS:
        names = set(visible.loc[visible["kind"] == kind, "name"])
        relevant = scored & (names | clean)
        figures[f"{kind} R"] = len(scored & names) / len(names) if names else None
        figures[f"{kind} P"] = len(relevant & names) / len(relevant) if relevant else None
    return figures


def main() -> None:
    results, settings = finished_run(__doc__.splitlines()[0])
    raw = sorted(glob.glob(str(results / "detection/det1/fold*/oof_raw.parquet")))
    detections = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in raw], ignore_index=True)
    boxes = tables.read_table(results / "curation/boxes.parquet", tables.CURATED_BOXES)
    folds = tables.read_table(results / "curation/folds.parquet", tables.FOLDS)
    images = tables.read_table(results / "curation/images.parquet", tables.CURATED_IMAGES)
    defects = tables.read_table(results / "synthetic/defects.parquet", tables.DEFECTS)
    evaluated = set(folds["name"])
    ours, _ = noisy.find_noisy_boxes(detections, boxes, folds, images, **settings["evidence"], **settings["decision"])
    rules = {
        "ours": set(noisy.excluded_images(ours)),
        "cleanlab object detection": noisy.cleanlab_flagged_images(detections, boxes, sorted(evaluated)),
        "old rule (quota 5 %)": old_rule_flagged(detections, boxes, sorted(evaluated)),
    }
    visible = defects[defects["kind"].isin(noisy.VISIBLE_DEFECTS) & defects["name"].isin(evaluated)]
    print(f"{len(evaluated)} evaluated train images; visible defects per kind:",
          visible["kind"].value_counts().to_dict())
    table = pd.DataFrame({rule: score(flagged, defects, evaluated) for rule, flagged in rules.items()})
    print(table.to_string(float_format=lambda value: f"{value:.3f}"))


if __name__ == "__main__":
    main()
