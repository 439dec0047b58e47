"""Wrong class labels: confident learning on the classifiers' out-of-fold probabilities (beyond the winner).

Every training crop has out-of-fold class probabilities from each multiclass classifier (the
model never saw the crop's fold). Their mean goes to cleanlab: `cleanlab.filter.find_label_issues`
(per-class thresholds of confident learning) decides which given labels are issues and
`cleanlab.rank.get_label_quality_scores` ranks them. Each issue gets the configured action:
`drop` (the crop leaves the classifiers), `relabel` (it takes the class the classifiers prefer)
or `keep` (reported only). The classifiers of this run were trained before the audit, so the
action reaches the crops through the review round trip (`leukoflow review export/import` and
`noisy.overrides`), like every other correction a person confirms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import constants, tables
from leukoflow.engine.runtime import tracked

ACTIONS = ("drop", "relabel", "keep")


def crop_rows(crops: pd.DataFrame, boxes: pd.DataFrame) -> pd.Series:
    """train.csv row of every training crop id ('<name>#<k>': the k-th box of its image by row)."""
    ordered = boxes.sort_values(["name", "row"], kind="stable")
    ids = ordered["name"] + "#" + ordered.groupby("name").cumcount().astype(str)
    row_of = pd.Series(ordered["row"].to_numpy(), index=ids.to_numpy())
    train_ids = crops.loc[crops["split"] == "train", "crop_id"]
    return row_of.reindex(train_ids.to_numpy()).dropna().astype(int)


def mean_class_probabilities(logit_tables: Iterable[pd.DataFrame], ids: pd.Index) -> pd.DataFrame:
    """Mean softmax over the classifiers (class columns only, renormalised), one row per id found in all."""
    n_classes = len(constants.CLASSES)
    sums, count = None, 0
    for frame in logit_tables:
        frame = frame.set_index("id").reindex(ids)
        logits = frame[[f"logit_{k}" for k in range(n_classes)]].to_numpy(float)
        shifted = np.exp(logits - np.nanmax(logits, axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        sums = probabilities if sums is None else sums + probabilities
        count += 1
    if sums is None:
        return pd.DataFrame(index=ids, columns=range(n_classes), dtype=float)
    return pd.DataFrame(sums / count, index=ids).dropna()


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray, *, filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """(issue mask, label quality score) via cleanlab on the classes that occur in `labels`."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(len(labels), dtype=bool), np.ones(len(labels))
    compact = np.searchsorted(present, labels)
    restricted = probabilities[:, present]
    restricted = restricted / np.clip(restricted.sum(axis=1, keepdims=True), 1e-12, None)
    issues = cleanlab_issues(compact, restricted, filter_by=filter_by)
    return issues, get_label_quality_scores(compact, restricted)


def audit_labels(crops: pd.DataFrame, boxes: pd.DataFrame, logit_tables: list[pd.DataFrame], *, filter_by: str,
                 action: str) -> pd.DataFrame:
    """LABEL_FLAGS: one row per training crop with OOF probabilities from every multiclass classifier."""
    if action not in ACTIONS:
        raise ValueError(f"noisy.labels.action: {action!r} is not one of {ACTIONS}")
    rows = crop_rows(crops, boxes)
    probabilities = mean_class_probabilities(logit_tables, pd.Index(rows.index))
    rows = rows.loc[probabilities.index]
    label_of = boxes.set_index("row")["label"]
    labels = np.array([constants.CLASS_TO_INDEX[label] for label in label_of.loc[rows.to_numpy()]], dtype=int)
    issues, quality = find_label_issues(labels, probabilities.to_numpy(), filter_by=filter_by)
    proposed = np.asarray(constants.CLASSES)[probabilities.to_numpy().argmax(axis=1)]
    frame = pd.DataFrame({
        "crop_id": rows.index.astype(str), "name": [crop_id.rsplit("#", 1)[0] for crop_id in rows.index],
        "row": rows.to_numpy(), "label": label_of.loc[rows.to_numpy()].to_numpy(), "proposed": proposed,
        "quality": quality.astype(float), "issue": issues.astype(bool),
        "action": np.where(issues, action, ""),
    })
    return frame.sort_values(["quality", "crop_id"], kind="stable").reset_index(drop=True)


def score_label_flags(flags: pd.DataFrame, defects: pd.DataFrame) -> dict[str, Any]:
    """Precision/recall of the label issues against the injected `wrong_label` rows that have a crop."""
    wrong = set(defects.loc[defects["kind"] == "wrong_label", "row"].astype(int)) & set(flags["row"])
    found = set(flags.loc[flags["issue"], "row"].astype(int))
    return {"label_noise_precision": len(found & wrong) / len(found) if found else None,
            "label_noise_recall": len(found & wrong) / len(wrong) if wrong else None,
            "label_noise_true": len(wrong), "label_noise_flagged": len(found)}


@tracked
def clean_labels(*, crops: str, label_boxes: str, logits: list[str], defects: list[str], label_flags: str,
                 filter_by: str, action: str) -> dict[str, Any]:
    """Rule entry: the label audit of the training crops and, on synthetic data, its precision/recall."""
    crop_table = tables.read_table(crops, tables.CROPS)
    box_table = tables.read_table(label_boxes, tables.CURATED_BOXES)
    logit_tables = [pd.read_parquet(path) for path in logits]
    crop_ids = set(crop_table["crop_id"])
    multiclass = [frame for frame in logit_tables if frame["id"].isin(crop_ids).any()]
    flags = audit_labels(crop_table, box_table, multiclass, filter_by=filter_by, action=action)
    tables.write_table(flags, label_flags, tables.LABEL_FLAGS)
    summary: dict[str, Any] = {"label_crops_audited": int(len(flags)), "label_issues": int(flags["issue"].sum()),
                               "label_classifiers": len(multiclass), "label_action": action}
    if defects:
        summary.update(score_label_flags(flags, tables.read_table(defects[0], tables.DEFECTS)))
    return summary
