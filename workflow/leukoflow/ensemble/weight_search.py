"""Rule entry `search_ensemble_weights`: search the blend on OOF, classify the OOF and test crops.

The summary guarantees `best_oof >= best_single_model_oof`: every multiclass model alone is an
enqueued trial of the same study (`study`), scored by the same objective. Optional per-class
offsets (`offsets`) are fitted after the weights and reported apart, each with its nested estimate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import tracked
from leukoflow.ensemble.blending import (Blended, Scheme, blend, blended_probability, equal_scheme,
                                         single_model_scheme, winner_scheme)
from leukoflow.ensemble.inputs import EnsembleInputs, N_CLASSES, align_inputs, read_logits
from leukoflow.ensemble.objectives import CLASS_CODES, OBJECTIVES, CropF1, Remembered, official_metric
from leukoflow.ensemble.offsets import fit_offsets, nested_offsets
from leukoflow.ensemble.study import has_search_space, nested_estimate, scheme_of_trial, search, trials_frame

LOGGER = logging.getLogger(__name__)
SCHEMES = ("best", "equal", "winner")
# Bumped when the enqueued trials change, so a stored study of an older search is not resumed.
SEARCH_VERSION = "singles-enqueued-1"


def classes_frame(inputs: EnsembleInputs, result: Blended) -> pd.DataFrame:
    """ENSEMBLE_CLASSES rows of blended predictions."""
    return pd.DataFrame({
        "id": pd.Series(inputs.ids, dtype="str"), "name": pd.Series(inputs.names, dtype="str"),
        "fold": inputs.folds.astype("int64"), "trustii_id": inputs.trustii.astype("int64"),
        "truth": inputs.truth.astype("int64"), "class_idx": result.class_idx.astype("int64"),
        "label": pd.Series(CLASS_CODES[result.class_idx], dtype="str"),
        "probability": result.probability.astype("float64"),
        "single_cell": inputs.single_cell.astype(bool), "blended": result.blended.astype(bool),
    })


def plot_history(trials: pd.DataFrame, references: Mapping[str, float], path: str | Path, title: str) -> None:
    """Trial values, running best, and horizontal lines for the reference schemes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    done = trials[trials["state"] == "COMPLETE"].sort_values("trial")
    axis.scatter(done["trial"], done["value"], s=14, color="tab:blue", label="trial")
    axis.step(done["trial"], done["value"].cummax(), where="post", color="tab:blue", label="best so far")
    colours = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:grey"])
    for label, value in references.items():
        if value is not None and np.isfinite(value):
            axis.axhline(value, linestyle="--", linewidth=1, color=next(colours), label=f"{label} {value:.4f}")
    axis.set_xlabel("trial")
    axis.set_ylabel("objective on OOF")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def study_fingerprint(paths: Sequence[str | Path], settings: Mapping[str, Any]) -> str:
    """Hash of the input files and search settings: a changed input starts a new study, more trials resume."""
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def most_frequent_class(inputs: EnsembleInputs) -> str:
    known = inputs.truth[inputs.truth >= 0]
    return str(CLASSES[int(np.bincount(known, minlength=N_CLASSES).argmax())]) if len(known) else CLASSES[0]


def _scores(inputs: EnsembleInputs, objective: Callable[..., float], schemes: Mapping[str, Scheme]) -> dict[str, float]:
    return {label: objective(blend(inputs, scheme).class_idx) for label, scheme in schemes.items()}


def _one(paths: str | Sequence[str]) -> str | None:
    if isinstance(paths, str):
        return paths
    return str(paths[0]) if len(paths) else None


def _objective(inputs: EnsembleInputs, objective: str, oof_boxes: str | None, crops: str | None,
               boxes: str | None, margin: float) -> tuple[Callable[..., float], dict[str, int]]:
    if objective not in OBJECTIVES:
        raise ValueError(f"ensemble.objective {objective!r} not in {OBJECTIVES}")
    if objective == "crop_f1":
        return Remembered(CropF1(inputs)), {}
    if not (oof_boxes and crops and boxes):
        raise ValueError("ensemble objective 'metric' needs the OOF boxes, the crop table and the curated boxes")
    metric, counts = official_metric(inputs, tables.read_table(oof_boxes, tables.OOF_BOXES),
                                     tables.read_table(crops, tables.CROPS),
                                     tables.read_table(boxes, tables.CURATED_BOXES), margin=margin)
    return Remembered(metric), counts


def _offsets(inputs: EnsembleInputs, scheme: Scheme, score: Callable[..., float],
             settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per-class offsets on top of the best scheme, with their nested estimate (None when off)."""
    if not settings["search"]:
        return None
    probability, _ = blended_probability(inputs, scheme)
    grid = {key: settings[key] for key in ("max_abs", "steps", "passes")}
    offsets, value = fit_offsets(probability, score, **grid)
    nested = (nested_offsets(probability, inputs.folds, score, **grid)
              if len(np.unique(inputs.folds)) > 1 else None)
    return {"offsets": np.round(offsets, 6), "oof": round(value, 6), "applied": bool(settings["apply"]),
            "nested_estimate": round(nested["score"], 6) if nested else None,
            "nested": nested["per_fold"] if nested else None}


@tracked
def search_ensemble_weights(
        *, mc_oof: Sequence[str], ml_oof: Sequence[str], mc_test: Sequence[str], ml_test: Sequence[str],
        oof_boxes: str | Sequence[str], crops: str | Sequence[str], boxes: str | Sequence[str],
        weights: str, oof_classes: str, test_classes: str, trials: str, plot: str, storage: str,
        multiclass: Sequence[str], multilabel: Sequence[str], margin: float, seed: int, objective: str,
        n_trials: int, nested_trials: int, n_startup_trials: int, alpha_range: Sequence[float],
        winner_alpha: float, groups: Sequence[Sequence[str]], apply: str, study_name: str,
        class_offsets: Mapping[str, Any]) -> dict[str, Any]:
    """Search the weights on OOF, write the OOF and test classes and weights.json, return the summary.

    `mc_*`/`ml_*`: LOGITS tables in `multiclass`/`multilabel` order. `oof_boxes`, `crops`, `boxes`
    (detector-1 OOF_BOXES, CROPS, CURATED_BOXES) are needed by the `metric` objective only (empty
    lists otherwise). `groups`: models sharing a group in the winner's scheme. `nested_trials`:
    trials of each inner search of the nested estimate (0 skips it). `apply`: which scheme
    classifies the test crops: best | equal | winner.
    """
    if apply not in SCHEMES:
        raise ValueError(f"ensemble.apply {apply!r} not in {SCHEMES}")
    started = time.perf_counter()
    alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
    inputs = align_inputs({n: read_logits(p) for n, p in zip(multiclass, mc_oof)},
                          {n: read_logits(p) for n, p in zip(multilabel, ml_oof)})
    score, counts = _objective(inputs, objective, _one(oof_boxes), _one(crops), _one(boxes), margin)
    summary: dict[str, Any] = {"objective": objective, "oof_crops": len(inputs), "alpha_range": list(alpha_range),
                               "multiclass_models": list(inputs.mc_names), "multilabel_models": list(inputs.ml_names),
                               "single_cell_crops": int(inputs.single_cell.sum()),
                               "blendable_crops": int((inputs.single_cell & inputs.has_ml).sum()), **counts}
    references = {"equal": equal_scheme(inputs), "winner": winner_scheme(inputs, groups, winner_alpha)}
    singles = {name: single_model_scheme(inputs, name) for name in inputs.mc_names}
    enqueue = [*references.items(), *((f"single:{n}", s) for n, s in singles.items())]
    name = f"{study_name}-" + study_fingerprint(
        [*mc_oof, *ml_oof, *([_one(oof_boxes), _one(crops), _one(boxes)] if objective == "metric" else [])],
        {"objective": objective, "alpha_range": alpha_range, "margin": margin, "seed": seed,
         "n_startup_trials": n_startup_trials, "groups": [list(g) for g in groups], "winner_alpha": winner_alpha,
         "version": SEARCH_VERSION})
    if has_search_space(inputs):
        study = search(inputs, score, n_trials=n_trials, seed=seed, alpha_range=alpha_range,
                       n_startup_trials=n_startup_trials, storage=storage, study_name=name, enqueue=enqueue)
        best, trial_table = scheme_of_trial(study.best_params, inputs), trials_frame(study, inputs)
    else:  # one MC model and no ML model: nothing to weigh
        best, trial_table = references["equal"], tables.empty_frame(tables.ENSEMBLE_TRIALS)
    schemes = {"best": best, **references}
    values = _scores(inputs, score, schemes)
    single_values = _scores(inputs, score, singles)
    best_single = max(single_values, key=single_values.get)
    if values["best"] < single_values[best_single]:
        raise RuntimeError(f"ensemble: best trial {values['best']} scores below model {best_single} alone "
                           f"({single_values[best_single]}): the enqueued single-model trials did not run")
    nested = (nested_estimate(inputs, score, n_trials=nested_trials, seed=seed, alpha_range=alpha_range,
                              n_startup_trials=n_startup_trials, enqueue=enqueue)
              if nested_trials > 0 and has_search_space(inputs) and len(np.unique(inputs.folds)) > 1 else None)
    offsets = _offsets(inputs, best, score, class_offsets)
    applied = schemes[apply]
    applied_offsets = offsets["offsets"] if offsets and offsets["applied"] else None

    tables.write_table(trial_table, trials, tables.ENSEMBLE_TRIALS)
    tables.write_table(classes_frame(inputs, blend(inputs, applied, applied_offsets)), oof_classes,
                       tables.ENSEMBLE_CLASSES)
    test_inputs = align_inputs({n: read_logits(p) for n, p in zip(multiclass, mc_test)},
                               {n: read_logits(p) for n, p in zip(multilabel, ml_test)})
    test_result = blend(test_inputs, applied, applied_offsets)
    tables.write_table(classes_frame(test_inputs, test_result), test_classes, tables.ENSEMBLE_CLASSES)
    fallback = most_frequent_class(inputs)
    payload = {"scheme": apply, **applied.as_dict(), "multiclass": list(inputs.mc_names),
               "multilabel": list(inputs.ml_names), "fallback_class": fallback, "objective": objective,
               "oof_score": round(values[apply], 6), "study": name,
               "class_offsets": _offset_map(applied_offsets)}
    Path(weights).parent.mkdir(parents=True, exist_ok=True)
    Path(weights).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    plot_history(trial_table, {"equal weights": values["equal"], "winner scheme": values["winner"],
                               f"best single ({best_single})": single_values[best_single],
                               "nested estimate": nested["score"] if nested else None},
                 plot, f"ensemble weight search ({objective}, {len(inputs)} OOF crops)")
    crop_f1 = CropF1(inputs)
    summary.update({
        "best_oof": round(values["best"], 6), "equal_weights_oof": round(values["equal"], 6),
        "winner_scheme_oof": round(values["winner"], 6), "best_single_model_oof": round(single_values[best_single], 6),
        "best_single_model": best_single, "single_models": {k: round(v, 6) for k, v in single_values.items()},
        "nested_estimate": round(nested["score"], 6) if nested else None,
        "optimism": round(values["best"] - nested["score"], 6) if nested else None,
        "nested": nested["per_fold"] if nested else None,
        "class_offsets": ({**offsets, "offsets": _offset_map(offsets["offsets"])} if offsets else None),
        "crop_macro_f1": {label: round(crop_f1(blend(inputs, s).class_idx), 6) for label, s in schemes.items()},
        "weights": best.as_dict(), "winner_weights": references["winner"].as_dict(),
        "applied": apply, "study": name, "n_trials": int((trial_table["state"] == "COMPLETE").sum()),
        "test_crops": len(test_inputs), "test_blended_crops": int(test_result.blended.sum()),
        "test_class_counts": {str(k): int(v) for k, v in
                              pd.Series(CLASS_CODES[test_result.class_idx]).value_counts().items()},
        "fallback_class": fallback, "search_seconds": round(time.perf_counter() - started, 3),
    })
    LOGGER.info("ensemble: best OOF %.4f (equal %.4f, winner %.4f, best single %.4f, nested %s)",
                values["best"], values["equal"], values["winner"], single_values[best_single],
                summary["nested_estimate"])
    return summary


def _offset_map(offsets: np.ndarray | None) -> dict[str, float] | None:
    if offsets is None:
        return None
    return {code: round(float(value), 6) for code, value in zip(CLASSES, offsets)}
