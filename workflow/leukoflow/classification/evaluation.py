"""Rule entries after training: the per-model OOF/test logit tables and the stage summary.

They read logit tables only, so they import neither torch nor timm (the training entries live in `stage`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.classification.scoring import argmax_macro_f1, evaluate_oof, frame_logits, frame_targets, plot_confusion
from leukoflow.classification.spec import ClassifierSpec
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import read_json, tracked

LOGGER = logging.getLogger(__name__)
Path_ = str | Path


@tracked
def predict_classifier(*, fold_oof: list[Path_], fold_test: list[Path_], oof: Path_, test: Path_,
                       spec: dict[str, Any]) -> dict[str, Any]:
    """Concatenate the fold OOF tables; average the folds' (TTA) test logits, the winner's fold mean."""
    model_spec = ClassifierSpec.from_config(spec)
    schema = tables.logits_schema(model_spec.n_outputs)
    oof_frame = pd.concat([tables.read_table(path, schema) for path in fold_oof], ignore_index=True)
    tables.write_table(oof_frame, oof, schema)
    folds = [tables.read_table(path, schema) for path in fold_test]
    mean = folds[0].copy()
    columns = [c for c in mean.columns if c.startswith("logit_")]
    for frame in folds[1:]:
        if not frame["id"].equals(mean["id"]):
            raise ValueError(f"{model_spec.name}: fold test logits list other crops than {fold_test[0]}")
    mean[columns] = np.mean([frame[columns].to_numpy(np.float64) for frame in folds], axis=0)
    tables.write_table(mean, test, schema)
    return {"model": model_spec.name, "oof_rows": len(oof_frame), "test_rows": len(mean), "folds": len(folds),
            "tta": model_spec.tta,
            "oof_macro_f1": round(argmax_macro_f1(frame_targets(oof_frame, model_spec.n_outputs),
                                                  frame_logits(oof_frame)), 6)}


@tracked
def evaluate_classifiers(*, oof: list[Path_], test: list[Path_], fold_summaries: list[Path_],
                         confusion: Path_, specs: list[dict[str, Any]], n_folds: int) -> dict[str, Any]:
    """Stage summary: per model the OOF argmax macro F1 overall, per fold and per class; training figures.

    `oof`, `test`: one path per model in `specs` order; `fold_summaries`: n_folds per model, same order.
    """
    summary: dict[str, Any] = {"models": {}, "metric": "argmax macro F1 over the 23 classes, single-class items"}
    panels = {}
    for position, entry in enumerate(specs):
        spec = ClassifierSpec.from_config(entry)
        schema = tables.logits_schema(spec.n_outputs)
        oof_frame = tables.read_table(oof[position], schema)
        runs = sorted((read_json(path) for path in fold_summaries[position * n_folds:(position + 1) * n_folds]),
                      key=lambda run: run["fold"])
        result = evaluate_oof(spec, oof_frame)
        result.update(_training_figures(spec, runs, len(tables.read_table(test[position], schema))))
        summary["models"][spec.name] = result
        panels[spec.name] = (spec.kind, oof_frame, spec.class_names)
        LOGGER.info("%s: OOF argmax macro F1 %.4f", spec.name, result["oof_macro_f1"])
    plot_confusion(panels, confusion)
    summary["oof_macro_f1"] = {name: result["oof_macro_f1"] for name, result in summary["models"].items()}
    summary["best_oof_macro_f1"] = max(summary["oof_macro_f1"].values(), default=0.0)
    summary["n_classes"] = len(CLASSES)
    return summary


def _training_figures(spec: ClassifierSpec, runs: list[dict[str, Any]], test_rows: int) -> dict[str, Any]:
    return {
        "backbone": spec.backbone, "img_size": spec.img_size, "n_outputs": spec.n_outputs, "test_rows": test_rows,
        "tta": spec.tta, "init_from": spec.init_from, "selection": spec.selection,
        "fold_best_val_score": {int(run["fold"]): run["best_val_score"] for run in runs},
        "fold_best_at_epoch": {int(run["fold"]): run["best_at_epoch"] for run in runs},
        "train_images_per_second": round(float(np.mean([run["train_images_per_second"] for run in runs])), 2),
        "train_seconds": round(float(sum(run.get("seconds", 0.0) for run in runs)), 3),
        # every fold sees the same crop table, so each reports the same count
        "unlabelled_crops_skipped": max((run.get("unlabelled_crops_skipped", 0) for run in runs), default=0),
    }
