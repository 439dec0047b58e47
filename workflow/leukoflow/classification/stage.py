"""Training rule entry of the classification stage (torch and timm); the light entries are in
`preparation` (crops, pixel caches) and `evaluation` (logit tables, stage summary).

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
from leukoflow.classification.items import ItemSet, load_items, split_fold, truth_from_paths
from leukoflow.classification.loop import train_fold
from leukoflow.classification.pseudo_labels import pseudo_items
from leukoflow.classification.model import BEST_FILE, load_best, predict_logits, resolve_device
from leukoflow.classification.preparation import Optional, Path_, optional_path
from leukoflow.classification.scoring import argmax_macro_f1, logits_frame
from leukoflow.classification.spec import ClassifierSpec, TrainSettings
from leukoflow.engine.runtime import tracked

LOGGER = logging.getLogger(__name__)


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
    truth = truth_from_paths(model_spec, crops=optional_path(crops), boxes=optional_path(boxes), folds=optional_path(folds))
    background = (optional_path(background_pixels), optional_path(background_index)) if model_spec.background else None
    summary = with_halved_batch_on_oom(
        model_spec, lambda batch_spec: run_train_fold(
            batch_spec, int(fold), main_cache=(str(pixels), str(index)), truth=truth, out_dir=Path(best).parent,
            oof_path=oof, background_cache=background, settings=settings,
            init=[path for path in [optional_path(init)] if path], test_path=fold_test,
            pseudo=tables.read_table(optional_path(pseudo), tables.PSEUDO_LABELS) if optional_path(pseudo) else None))
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
    arrays, main, background, skipped = load_items(spec, main_cache, truth, background_cache,
                                                   decoders=settings.threads)
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
