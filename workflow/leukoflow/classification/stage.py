"""Rule entries of the classification stage (one per rule of workflow/rules/classification.smk).

Each takes one path per file and its config values as keyword arguments; a rule gives every
input name it could use, an empty list where this model does not use it (a multiclass model has
no curated boxes, a model without `init_from` no start checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.classification import crop_cache
from leukoflow.classification.items import (ItemSet, crops_from_ground_truth, load_items, split_fold,
                                            truth_from_paths)
from leukoflow.classification.loop import train_fold
from leukoflow.classification.pseudo_labels import pseudo_items
from leukoflow.classification.model import BEST_FILE, load_best, predict_logits, resolve_device
from leukoflow.classification.scoring import (argmax_macro_f1, evaluate_oof, frame_logits, frame_targets,
                                              logits_frame, plot_confusion)
from leukoflow.classification.spec import ClassifierSpec, TrainSettings
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import read_json, tracked

LOGGER = logging.getLogger(__name__)
Path_ = str | Path
Optional = Path_ | list


def _one(value: Optional) -> str | None:
    """A path, or None for an input the rule left empty."""
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise ValueError(f"expected at most one file, got {value}")
        return str(value[0]) if value else None
    return str(value)


def ground_truth_crops(*, boxes: Path_, folds: Path_, images: Path_, crops: Path_, margin: float) -> dict[str, Any]:
    """CROPS rows cut from the curated ground-truth boxes (the development crop source)."""
    table = crops_from_ground_truth(tables.read_table(boxes, tables.CURATED_BOXES),
                                    tables.read_table(folds, tables.FOLDS),
                                    tables.read_table(images, tables.CURATED_IMAGES), margin=margin)
    tables.write_table(table, crops, tables.CROPS)
    return {"crops": len(table), "source": "ground_truth", "margin": margin}


def cache_classifier_inputs(*, images: Path_, crops: Optional, folds: Optional, backgrounds: Optional,
                            pixels: Path_, index: Path_, source: str, size: int, seed: int,
                            background: dict[str, Any], threads: int) -> dict[str, Any]:
    """One pixel cache (`crop_cache`) of a source at a size."""
    def optional(path: Optional, schema: tables.Schema) -> pd.DataFrame | None:
        return tables.read_table(_one(path), schema) if _one(path) else None

    return crop_cache.build_cache(
        source, int(size), pixels, index, images=tables.read_table(images, tables.CURATED_IMAGES),
        crops=optional(crops, tables.CROPS), folds=optional(folds, tables.FOLDS),
        backgrounds=optional(backgrounds, tables.BACKGROUNDS), seed=seed, threads=threads,
        background_crops_per_image=background["per_image"], background_min_side=background["min_side"],
        background_max_side=background["max_side"], background_valid_side=background["valid_side"],
        background_valid_position=tuple(background["valid_position"]))


def _settings(seed: int, device: str, amp: bool, deterministic: bool, channels_last: bool, prefetch: bool,
              threads: int) -> TrainSettings:
    return TrainSettings(seed=seed, device=device, threads=threads, amp=amp, deterministic=deterministic,
                         channels_last=channels_last, prefetch=prefetch)


@tracked
def train_classifier(*, pixels: Path_, index: Path_, crops: Optional, boxes: Optional, folds: Optional,
                     background_pixels: Optional, background_index: Optional, weights: Optional, init: Optional,
                     pseudo: Optional, best: Path_, oof: Path_, fold_test: Path_, spec: dict[str, Any], fold: int,
                     seed: int, device: str, amp: bool, deterministic: bool, channels_last: bool, prefetch: bool,
                     threads: int) -> dict[str, Any]:
    """Train one (model, fold), then write its OOF logits (best weights, no TTA, real items only) and
    its test logits (TTA as the spec says).

    `weights`: the model's declared start weights (the spec names the same file); `init`: the
    fold checkpoint of the `init_from` model; `pseudo`: the round's PSEUDO_LABELS table (rows of
    this fold join training). `state.pt` beside `best` makes a killed job resume.
    """
    model_spec = ClassifierSpec.from_config(spec)
    settings = _settings(seed, device, amp, deterministic, channels_last, prefetch, threads)
    truth = truth_from_paths(model_spec, crops=_one(crops), boxes=_one(boxes), folds=_one(folds))
    background = (_one(background_pixels), _one(background_index)) if model_spec.background else None
    summary = with_halved_batch_on_oom(
        model_spec, lambda batch_spec: run_train_fold(
            batch_spec, int(fold), main_cache=(str(pixels), str(index)), truth=truth, out_dir=Path(best).parent,
            oof_path=oof, background_cache=background, settings=settings,
            init=[path for path in [_one(init)] if path], test_path=fold_test,
            pseudo=tables.read_table(_one(pseudo), tables.PSEUDO_LABELS) if _one(pseudo) else None))
    if Path(best).name != BEST_FILE:
        raise ValueError(f"train_classifier: output best must be named {BEST_FILE}, got {best}")
    return summary


def with_halved_batch_on_oom(spec: ClassifierSpec, run: Callable[[ClassifierSpec], dict[str, Any]]
                             ) -> dict[str, Any]:
    """run(spec); on a CUDA out-of-memory error, again with half the batch (down to 1).

    More host memory (the scheduler's retry) does not help a full GPU; a smaller batch does. The
    summary records the batch size that fitted.
    """
    import torch

    batch_size = spec.batch_size
    while True:
        try:
            summary = run(replace(spec, batch_size=batch_size))
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            LOGGER.warning("%s: CUDA out of memory at batch %d; retrying with %d", spec.name, batch_size,
                           batch_size // 2)
            batch_size //= 2
            continue
        summary["batch_size_used"] = batch_size
        return summary


def run_train_fold(spec: ClassifierSpec, fold: int, *, main_cache: tuple[Path_, Path_], truth: pd.DataFrame,
                   out_dir: Path_, oof_path: Path_, settings: TrainSettings,
                   background_cache: tuple[Path_, Path_] | None, init: list[str], test_path: Path_ | None = None,
                   pseudo: pd.DataFrame | None = None) -> dict[str, Any]:
    """Train one fold from cache files, write the OOF logits of its best weights (and, given
    `test_path`, its test logits); `pseudo` rows of this fold join the training items."""
    arrays, main, background, skipped = load_items(spec, main_cache, truth, background_cache)
    train, valid = split_fold(main, fold, background)
    n_pseudo = 0
    if pseudo is not None:
        extra = pseudo_items(main, pseudo, fold, spec.n_outputs)
        train, n_pseudo = ItemSet.concat([train, extra]), len(extra)
    summary = train_fold(spec, arrays, train, valid, out_dir, fold=fold, settings=settings, init=init)
    device = resolve_device(settings.device)
    _, model = load_best(Path(out_dir) / BEST_FILE, device)
    real_valid = valid.subset(valid.real)
    logits = predict_logits(model, arrays, real_valid, batch_size=spec.batch_size, device=device,
                            amp=settings.amp, channels_last=settings.channels_last)
    tables.write_table(logits_frame(real_valid, logits, np.full(len(real_valid), fold)), oof_path,
                       tables.logits_schema(spec.n_outputs))
    if test_path is not None:
        test_items = main.subset(main.role == "test")
        test_logits = predict_logits(model, arrays, test_items, batch_size=spec.batch_size, device=device,
                                     tta=spec.tta, amp=settings.amp, channels_last=settings.channels_last)
        tables.write_table(logits_frame(test_items, test_logits, np.full(len(test_items), -1)), test_path,
                           tables.logits_schema(spec.n_outputs))
    summary.update(skipped)
    summary["pseudo_labels"] = n_pseudo
    summary["oof_macro_f1"] = round(argmax_macro_f1(real_valid.target, logits), 6)
    return summary


def predict_test(checkpoints: list[Path_], arrays: list[np.ndarray], items, *, settings: TrainSettings,
                 batch_size: int | None = None) -> np.ndarray:
    """Mean over the fold models of their (TTA-averaged, per the spec) test logits."""
    import torch

    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads)
    total = None
    for path in checkpoints:
        spec, model = load_best(path, device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        logits = predict_logits(model, arrays, items, batch_size=batch_size or spec.batch_size, device=device,
                                tta=spec.tta, amp=settings.amp, channels_last=settings.channels_last)
        total = logits if total is None else total + logits
    if total is None:
        raise ValueError("predict_test: no fold checkpoints given")
    return total / len(checkpoints)


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
