"""Test pseudo-label rounds (docs/method.md §8.3), fold-safe.

Round r (r >= 1) trains the models whose `pseudo_round` is r on their usual training folds plus
confident test crops. The winner took those labels from the full previous ensemble, whose models
had seen every training fold, so later OOF scores were optimistic. Here the crops that join fold
k's training are labelled by the previous round's fold-k models only: they never saw fold k's
validation images, so no validation label leaks back through a test crop. A crop qualifies when
its image has exactly one cell and detector score x mean multiclass probability of its class is
above the round's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.classification.items import ItemSet, labels_to_multi_hot
from leukoflow.classification.scoring import argmax_macro_f1, frame_targets
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import read_json

N_CLASSES = len(CLASSES)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fold_pseudo_labels(fold: int, frames: Sequence[pd.DataFrame], crops: pd.DataFrame, threshold: float
                       ) -> pd.DataFrame:
    """PSEUDO_LABELS rows of one fold from the fold models' test logits (one LOGITS frame per model)."""
    ids = frames[0]["id"].to_numpy(str)
    probability = np.mean([_softmax(frame.set_index("id").loc[ids][[f"logit_{k}" for k in range(N_CLASSES)]]
                                    .to_numpy(np.float64)) for frame in frames], axis=0)
    test = crops[crops["split"] == "test"].set_index("crop_id")
    single = test["name"].map(test["name"].value_counts()) == 1
    names = test.loc[ids, "name"].to_numpy(str)
    confidence = test.loc[ids, "score"].to_numpy(float) * probability.max(axis=1)
    keep = single.loc[ids].to_numpy() & (confidence > threshold)
    return pd.DataFrame({
        "crop_id": pd.Series(ids[keep], dtype="str"), "name": pd.Series(names[keep], dtype="str"),
        "fold": np.full(int(keep.sum()), fold, dtype="int64"),
        "class_idx": probability.argmax(axis=1)[keep].astype("int64"), "confidence": confidence[keep],
    })


def select_pseudo_labels(*, fold_test: list[str], crops: str, pseudo: str, round: int, threshold: float,
                         models: list[str], n_folds: int) -> dict[str, Any]:
    """Rule entry: round `round`'s pseudo-labels. `fold_test`: per-fold test logits of the previous
    round's multiclass `models`, model-major (n_folds files per model)."""
    if not models:
        raise ValueError(f"pseudo-label round {round}: no multiclass model of round {round - 1} to label with")
    crop_table = tables.read_table(crops, tables.CROPS)
    frames = [pd.read_parquet(path) for path in fold_test]
    parts = [fold_pseudo_labels(fold, [frames[m * n_folds + fold] for m in range(len(models))], crop_table,
                                threshold) for fold in range(n_folds)]
    table = pd.concat(parts, ignore_index=True) if parts else tables.empty_frame(tables.PSEUDO_LABELS)
    tables.write_table(table, pseudo, tables.PSEUDO_LABELS)
    return {"round": round, "threshold": threshold, "labelled_by": models,
            "test_crops": int((crop_table["split"] == "test").sum()),
            "pseudo_labels": int(table["crop_id"].nunique()),
            "per_fold": {str(fold): int((table["fold"] == fold).sum()) for fold in range(n_folds)},
            "class_counts": {CLASSES[k]: int(v) for k, v in table["class_idx"].value_counts().sort_index().items()}}


def pseudo_items(main: ItemSet, table: pd.DataFrame, fold: int, n_outputs: int) -> ItemSet:
    """The test items of `main` that join fold `fold`'s training, with their pseudo targets."""
    rows = table[table["fold"] == fold].set_index("crop_id")
    mask = (main.role == "test") & np.isin(main.ids, rows.index.to_numpy(str))
    items = main.subset(mask)
    labels = rows.loc[items.ids, "class_idx"].astype(str).to_numpy()
    items.target = labels_to_multi_hot(labels, n_outputs)
    return items


def summarize_pseudo_labels(*, rounds: list[str], oof: list[str], models: list[str],
                            model_rounds: list[int], n_outputs: list[int]) -> dict[str, Any]:
    """Rule entry: per round its models, pseudo-labels and the OOF argmax macro F1 of the mean of its
    multiclass models' OOF logits (round 0: no pseudo-labels)."""
    summaries = {read_json(path)["round"]: read_json(path) for path in rounds}
    result = []
    for round_ in sorted(set(model_rounds)):
        members = [k for k, r in enumerate(model_rounds) if r == round_]
        frames = [tables.read_table(oof[k], tables.logits_schema(n_outputs[k])) for k in members]
        ids = frames[0]["id"].to_numpy(str)
        logits = np.mean([frame.set_index("id").loc[ids].reset_index()[[f"logit_{c}" for c in range(N_CLASSES)]]
                          .to_numpy(np.float64) for frame in frames], axis=0)
        target = frame_targets(frames[0], n_outputs[members[0]])
        info = summaries.get(round_, {})
        result.append({"round": round_, "models": [models[k] for k in members],
                       "pseudo_labels": info.get("pseudo_labels", 0), "per_fold": info.get("per_fold", {}),
                       "threshold": info.get("threshold"),
                       "oof_macro_f1": round(argmax_macro_f1(target, logits), 6)})
    return {"rounds": result, "n_rounds": max(model_rounds, default=0)}

