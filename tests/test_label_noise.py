"""Wrong class labels found by confident learning (cleanlab) on hand-made out-of-fold logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukoflow import constants, tables
from leukoflow.detection import label_noise

CODES = constants.CLASSES[:3]


def tables_for(labels, confident_class, n_logits=len(constants.CLASSES)):
    """One image per crop; `confident_class[k]` is the class the classifier is sure of for crop k."""
    names = [f"img{k:03d}.jpg" for k in range(len(labels))]
    boxes = pd.DataFrame({"row": np.arange(len(labels)), "name": names, "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0,
                          "label": labels, "class_idx": [constants.CLASS_TO_INDEX[c] for c in labels],
                          "clipped": False})[tables.CURATED_BOXES.column_names]
    crops = pd.DataFrame({"crop_id": [f"{n}#0" for n in names], "name": names, "split": "train", "fold": 0,
                          "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0, "score": 0.9, "label": labels,
                          "class_idx": [constants.CLASS_TO_INDEX[c] for c in labels], "trustii_id": -1,
                          "source": "det2_oof"})[tables.CROPS.column_names]
    logits = np.full((len(labels), n_logits), -4.0)
    logits[np.arange(len(labels)), [constants.CLASS_TO_INDEX[c] for c in confident_class]] = 4.0
    frame = pd.DataFrame(logits, columns=[f"logit_{k}" for k in range(n_logits)])
    frame.insert(0, "id", crops["crop_id"])
    return crops, boxes, frame


def test_a_wrong_label_is_caught_and_the_clean_ones_are_not():
    labels = [CODES[k % 3] for k in range(30)]
    believed = list(labels)
    believed[7] = CODES[(CODES.index(labels[7]) + 1) % 3]  # crop 7 carries the wrong label
    crops, boxes, logits = tables_for(labels, believed)
    flags = label_noise.audit_labels(crops, boxes, [logits], filter_by="prune_by_noise_rate", action="relabel")
    tables.validate(flags, tables.LABEL_FLAGS)
    assert flags.loc[flags["issue"], "row"].tolist() == [7]
    issue = flags[flags["issue"]].iloc[0]
    assert (issue["proposed"], issue["action"], issue["label"]) == (believed[7], "relabel", labels[7])
    assert flags.iloc[0]["row"] == 7  # lowest label quality first
    defects = pd.DataFrame({"kind": ["wrong_label", "red_cell_box"], "name": ["img007.jpg", "img001.jpg"],
                            "source": "", "row": [7, 1], "detail": ""})
    assert label_noise.score_label_flags(flags, defects)["label_noise_precision"] == 1.0
    assert label_noise.score_label_flags(flags, defects)["label_noise_recall"] == 1.0


def test_all_clean_labels_give_no_issue_and_background_logits_are_ignored():
    labels = [CODES[k % 3] for k in range(30)]
    crops, boxes, logits = tables_for(labels, labels, n_logits=len(constants.CLASSES) + 1)
    logits[f"logit_{len(constants.CLASSES)}"] = 9.0  # a background output must not change the class probabilities
    flags = label_noise.audit_labels(crops, boxes, [logits, logits], filter_by="prune_by_noise_rate", action="drop")
    assert not flags["issue"].any() and (flags["action"] == "").all()


def test_unknown_action_is_rejected():
    crops, boxes, logits = tables_for(list(CODES), list(CODES))
    with pytest.raises(ValueError, match="noisy.labels.action"):
        label_noise.audit_labels(crops, boxes, [logits], filter_by="prune_by_noise_rate", action="fix")


def test_clean_labels_entry_reads_multiclass_tables_only(tmp_path):
    labels = [CODES[k % 3] for k in range(30)]
    believed = list(labels)
    believed[4] = CODES[(CODES.index(labels[4]) + 2) % 3]
    crops, boxes, logits = tables_for(labels, believed)
    paths = {name: str(tmp_path / f"{name}.parquet") for name in ("crops", "boxes", "mc", "ml")}
    crops.to_parquet(paths["crops"])
    boxes.to_parquet(paths["boxes"])
    logits.to_parquet(paths["mc"])
    logits.assign(id=crops["name"]).to_parquet(paths["ml"])  # a multilabel table: one row per image
    summary = label_noise.clean_labels(crops=paths["crops"], label_boxes=paths["boxes"], logits=[paths["mc"], paths["ml"]],
                                       defects=[], label_flags=str(tmp_path / "flags.parquet"),
                                       filter_by="prune_by_noise_rate", action="drop")
    assert summary["label_classifiers"] == 1 and summary["label_issues"] == 1
    flags = tables.read_table(tmp_path / "flags.parquet", tables.LABEL_FLAGS)
    assert flags.loc[flags["issue"], "row"].tolist() == [4]
