"""Ensemble of the classifiers (METHOD.md §9) and an Optuna search of its weights on out-of-fold data.

Structure (§9.1). Every classifier's logits arrive already averaged over its fold models (and
hflip TTA for test) by the classification stage. Here the multiclass (MC) models are combined by
a weighted mean of their first 23 logits (the Background logit is dropped), followed by a softmax;
the multilabel (ML) models by a plain mean of their logits, followed by a sigmoid. On an image with
exactly one cell the class is argmax(alpha * softmax(MC) + (1 - alpha) * sigmoid(ML)); on an image
with several cells it is argmax(MC): the ML model is never used there.

Search (§9.2, "Where we go further" 5). The winner fixed the group weights by hand (0.25 each)
and grid-searched alpha on OOF crop macro F1. Here a seeded TPE study searches the per-model MC
weights (normalised to sum 1) and alpha together, against either

* `crop_f1`: macro F1 of the blended class over every OOF crop (the winner's objective), or
* `metric`: the official challenge score (`leukoflow.metric.score`) of the detector-1 OOF boxes
  carrying the blended classes: each OOF box takes the class of the crop whose window overlaps it
  most (same image, IoU of the box grown by the crop margin with the crop window).

The equal-weights scheme and the winner's scheme are enqueued as the first two trials, so the
search space contains both and the best trial is never worse on the OOF. The study lives in an
SQLite file: a killed or extended search resumes. Trial k samples with its own seed derived from
(seed, k), so a resumed study proposes exactly what an uninterrupted one would, and never repeats
a startup point. Because the best OOF score is optimistic (the weights were tuned on it), a nested
estimate is reported as well: per fold, a fresh search on the other folds, its best weights
applied to the held-out fold, and all held-out predictions scored together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib
from leukoflow import tables
from leukoflow.constants import CLASSES

LOGGER = logging.getLogger(__name__)
N_CLASSES = len(CLASSES)
CLASS_CODES = np.array(CLASSES, dtype=object)
OBJECTIVES = ("metric", "crop_f1")
SCHEMES = ("best", "equal", "winner")
# "Equal weights" is the plain mean of the two probability vectors: a definition, not a tunable.
EQUAL_ALPHA = 0.5
WEIGHT_PARAM = "w_"
ALPHA_PARAM = "alpha"


# ----------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class EnsembleInputs:
    """Every crop's logits from every model, aligned on the crop id (order of the first MC table)."""

    ids: np.ndarray  # str, crop_id
    names: np.ndarray  # str, image NAME
    folds: np.ndarray  # int
    trustii: np.ndarray  # int
    truth: np.ndarray  # int, -1 when unknown (test)
    mc_names: tuple[str, ...]
    mc_logits: np.ndarray  # float64 [M, n, 23]
    ml_names: tuple[str, ...]
    ml_logits: np.ndarray  # float64 [n, 23], mean over the ML models; 0 where has_ml is False
    has_ml: np.ndarray  # bool [n]: every ML model has a row for the crop's image
    single_cell: np.ndarray  # bool [n]: the crop's image has exactly one crop

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> EnsembleInputs:
        """The given rows; `single_cell` keeps its value (it is a property of the whole image)."""
        return EnsembleInputs(
            self.ids[rows], self.names[rows], self.folds[rows], self.trustii[rows], self.truth[rows],
            self.mc_names, self.mc_logits[:, rows], self.ml_names, self.ml_logits[rows], self.has_ml[rows],
            self.single_cell[rows])


def read_logits(path: str | Path) -> pd.DataFrame:
    """A LOGITS table of any width, validated against `tables.logits_schema(K)`."""
    frame = pd.read_parquet(path)
    n_logits = sum(column.startswith("logit_") for column in frame.columns)
    return tables.validate(frame, tables.logits_schema(n_logits), str(path))


def _class_logits(frame: pd.DataFrame, model: str) -> np.ndarray:
    columns = [f"logit_{k}" for k in range(N_CLASSES)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"model {model!r}: logits table lacks {missing[:3]} (needs the {N_CLASSES} class logits)")
    return frame[columns].to_numpy(np.float64)


def align_inputs(multiclass: Mapping[str, pd.DataFrame],
                 multilabel: Mapping[str, pd.DataFrame] | None = None) -> EnsembleInputs:
    """Align the crop-level MC tables on crop id and map the image-level ML tables to the crops.

    Raises:
        ValueError: no MC table, or an MC table whose crop ids differ from the first one's.
    """
    if not multiclass:
        raise ValueError("ensemble: at least one multiclass model is needed")
    multilabel = multilabel or {}
    first_name, first = next(iter(multiclass.items()))
    if first["id"].duplicated().any():
        raise ValueError(f"ensemble: model {first_name!r} repeats crop id {first['id'][first['id'].duplicated()].iloc[0]!r}")
    ids = first["id"].to_numpy(str)
    stacked = []
    for name, frame in multiclass.items():
        indexed = frame.set_index("id")
        missing = sorted(set(ids) - set(indexed.index))
        extra = sorted(set(indexed.index) - set(ids))
        if missing or extra or len(frame) != len(ids):
            raise ValueError(f"ensemble: model {name!r} has other crops than {first_name!r}: "
                             f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} extra (e.g. {extra[:2]})")
        stacked.append(_class_logits(indexed.loc[ids], name))
    names = first["name"].to_numpy(str)
    counts = pd.Series(names).value_counts()
    single_cell = pd.Series(names).map(counts).to_numpy() == 1
    has_ml = np.ones(len(ids), dtype=bool)
    ml_sum = np.zeros((len(ids), N_CLASSES))
    for name, frame in multilabel.items():
        indexed = frame.drop_duplicates("id").set_index("id")
        present = np.isin(names, indexed.index.to_numpy(str))
        has_ml &= present
        rows = _class_logits(indexed.reindex(names), name)
        ml_sum += np.where(present[:, None], rows, 0.0)
    if not multilabel:
        has_ml[:] = False
    ml_logits = np.where(has_ml[:, None], ml_sum / max(len(multilabel), 1), 0.0)
    return EnsembleInputs(
        ids=ids, names=names, folds=first["fold"].to_numpy("int64"), trustii=first["trustii_id"].to_numpy("int64"),
        truth=first["truth"].to_numpy("int64"), mc_names=tuple(multiclass), mc_logits=np.stack(stacked),
        ml_names=tuple(multilabel), ml_logits=ml_logits, has_ml=has_ml, single_cell=single_cell)


# ----------------------------------------------------------------------------- blending

@dataclass(frozen=True)
class Scheme:
    """Normalised MC weights per model and the single-cell alpha (1.0: MC only)."""

    weights: dict[str, float]
    alpha: float

    def as_dict(self) -> dict[str, Any]:
        return {"weights": {k: round(v, 6) for k, v in self.weights.items()}, "alpha": round(self.alpha, 6)}


@dataclass(frozen=True)
class Blended:
    class_idx: np.ndarray  # int [n]
    probability: np.ndarray  # float [n]
    blended: np.ndarray  # bool [n]: the ML model took part


def normalised(raw: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """Weights scaled to sum 1 (all equal when every raw weight is 0)."""
    values = np.array([max(float(raw.get(name, 0.0)), 0.0) for name in names])
    values = values / values.sum() if values.sum() > 0 else np.full(len(names), 1.0 / len(names))
    return dict(zip(names, values.tolist()))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # overflow-free logistic


def blend(inputs: EnsembleInputs, scheme: Scheme) -> Blended:
    """Classes of every crop under a scheme (module docstring: §9.1 steps 3-5)."""
    weights = np.array([scheme.weights.get(name, 0.0) for name in inputs.mc_names])
    mc_logits = np.tensordot(weights, inputs.mc_logits, axes=1)
    probability = softmax(mc_logits)
    use_ml = inputs.single_cell & inputs.has_ml & (scheme.alpha < 1.0)
    if use_ml.any():
        probability[use_ml] = (scheme.alpha * probability[use_ml]
                               + (1.0 - scheme.alpha) * sigmoid(inputs.ml_logits[use_ml]))
    class_idx = probability.argmax(axis=1)
    return Blended(class_idx, probability[np.arange(len(class_idx)), class_idx], use_ml)


def equal_scheme(inputs: EnsembleInputs) -> Scheme:
    return Scheme(normalised({n: 1.0 for n in inputs.mc_names}, inputs.mc_names),
                  EQUAL_ALPHA if inputs.ml_names else 1.0)


def winner_scheme(inputs: EnsembleInputs, groups: Sequence[Sequence[str]], alpha: float) -> Scheme:
    """Equal weight per group, split equally inside a group (§9.1 step 3).

    `groups` lists the models that share a group; a model in no group is a group of its own.
    """
    listed = {model: f"group {index}" for index, members in enumerate(groups) for model in members}
    group_of = {name: listed.get(name, name) for name in inputs.mc_names}
    sizes = pd.Series(group_of).value_counts()
    raw = {name: 1.0 / (len(sizes) * sizes[group]) for name, group in group_of.items()}
    return Scheme(normalised(raw, inputs.mc_names), alpha if inputs.ml_names else 1.0)


def single_model_scheme(inputs: EnsembleInputs, model: str) -> Scheme:
    return Scheme(normalised({model: 1.0}, inputs.mc_names), 1.0)


# ----------------------------------------------------------------------------- objectives

class CropF1:
    """Macro F1 of the predicted class over the crops with a known class (the winner's CV)."""

    name = "crop_f1"

    def __init__(self, inputs: EnsembleInputs):
        self.truth = inputs.truth
        self.known = inputs.truth >= 0

    def __call__(self, class_idx: np.ndarray, rows: np.ndarray | None = None) -> float:
        from sklearn.metrics import f1_score

        mask = self.known if rows is None else self.known & rows
        return float(f1_score(self.truth[mask], class_idx[mask], average="macro", zero_division=0))


class OfficialMetric:
    """The challenge score of fixed OOF boxes whose class comes from a crop row each (module docstring).

    `skeleton` is a submission without classes plus a `crop_row` column (index into the crops);
    `truth` the matching ground truth in the metric's format.
    """

    name = "metric"

    def __init__(self, truth: pd.DataFrame, skeleton: pd.DataFrame, names: np.ndarray):
        self.truth = truth
        self.skeleton = skeleton
        self.crop_row = skeleton["crop_row"].to_numpy()
        self.names = names

    def submission(self, class_idx: np.ndarray) -> pd.DataFrame:
        frame = self.skeleton.drop(columns="crop_row")
        frame["class"] = CLASS_CODES[class_idx[self.crop_row]]
        return frame

    def result(self, class_idx: np.ndarray, rows: np.ndarray | None = None):
        from leukoflow import metric

        truth, submission = self.truth, self.submission(class_idx)
        if rows is not None:
            keep = set(self.names[rows])
            truth = truth[truth["NAME"].isin(keep)]
            submission = submission[submission["NAME"].isin(keep)]
        return metric.score(truth, submission)

    def __call__(self, class_idx: np.ndarray, rows: np.ndarray | None = None) -> float:
        return self.result(class_idx, rows).score


def official_metric(inputs: EnsembleInputs, oof_boxes: pd.DataFrame, crops: pd.DataFrame,
                    boxes: pd.DataFrame, *, margin: float) -> tuple[OfficialMetric, dict[str, int]]:
    """The `metric` objective from detector-1 OOF boxes (OOF_BOXES), the crop table and the curated boxes.

    Images scored: those with OOF boxes and crops in `inputs` (the others are counted in the
    returned figures, not scored). Each OOF box, grown by `margin`,
    takes the crop (of the same image) whose window has the highest IoU with it; the k-th box of an
    image answers the image's k-th truth row (pairing does not change the score, METHOD §10.3).
    """
    from leukoflow.detection import yolo as detection

    row_of_crop = pd.Series(np.arange(len(inputs)), index=inputs.ids)
    windows = crops[crops["crop_id"].isin(row_of_crop.index)].set_index("crop_id")
    with_crops = set(windows["name"])
    fitted = oof_boxes[oof_boxes["name"].isin(with_crops)]
    scope = sorted(set(fitted["name"]))
    truth = detection.truth_table(boxes[boxes["name"].isin(scope)])
    crop_rows = []
    crops_by_name = dict(tuple(windows.assign(crop_row=row_of_crop.loc[windows.index].to_numpy()).groupby("name")))
    fitted_sorted = fitted.sort_values(["name", "rank"], kind="stable")
    for name, image_boxes in fitted_sorted.groupby("name", sort=True):
        candidates = crops_by_name[name]
        grown = image_boxes[["x1", "y1", "x2", "y2"]].to_numpy(float) + np.array([-margin, -margin, margin, margin])
        overlap = boxes_lib.iou_matrix(grown, candidates[["x1", "y1", "x2", "y2"]].to_numpy(float))
        crop_rows.append(candidates["crop_row"].to_numpy()[overlap.argmax(axis=1)])
    fitted_sorted = fitted_sorted.assign(crop_row=np.concatenate(crop_rows) if crop_rows else np.zeros(0, int))
    ranked = truth.assign(rank=truth.groupby("NAME").cumcount())
    skeleton = ranked[["trustii_id", "NAME", "rank"]].merge(
        fitted_sorted.rename(columns={"name": "NAME"})[["NAME", "rank", "x1", "y1", "x2", "y2", "crop_row"]],
        on=["NAME", "rank"], how="left")
    unanswered = skeleton["crop_row"].isna()
    if unanswered.any():
        raise ValueError(f"ensemble metric objective: {int(unanswered.sum())} truth row(s) have no OOF box, "
                         f"e.g. image {skeleton.loc[unanswered, 'NAME'].iloc[0]!r}")
    skeleton = skeleton.drop(columns="rank").astype({"crop_row": "int64"})
    counts = {"metric_images": len(scope), "metric_cells": len(truth),
              "metric_images_without_oof_boxes": len(set(inputs.names) - set(oof_boxes["name"])),
              "metric_images_without_crops": len(set(oof_boxes["name"]) - with_crops)}
    return OfficialMetric(truth, skeleton, inputs.names), counts


# ----------------------------------------------------------------------------- search

def trial_seed(seed: int, trial_number: int) -> int:
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def scheme_params(scheme: Scheme, inputs: EnsembleInputs) -> dict[str, float]:
    """The Optuna parameters that reproduce a scheme (only the searched ones)."""
    params: dict[str, float] = {}
    if len(inputs.mc_names) > 1:
        params.update({WEIGHT_PARAM + name: scheme.weights[name] for name in inputs.mc_names})
    if inputs.ml_names:
        params[ALPHA_PARAM] = scheme.alpha
    return params


def suggest_scheme(trial, inputs: EnsembleInputs, alpha_range: tuple[float, float]) -> Scheme:
    raw = {name: 1.0 for name in inputs.mc_names}
    if len(inputs.mc_names) > 1:
        raw = {name: trial.suggest_float(WEIGHT_PARAM + name, 0.0, 1.0) for name in inputs.mc_names}
    alpha = trial.suggest_float(ALPHA_PARAM, *alpha_range) if inputs.ml_names else 1.0
    return Scheme(normalised(raw, inputs.mc_names), alpha)


def scheme_of_trial(params: Mapping[str, float], inputs: EnsembleInputs) -> Scheme:
    raw = {name: params.get(WEIGHT_PARAM + name, 1.0) for name in inputs.mc_names}
    return Scheme(normalised(raw, inputs.mc_names), params.get(ALPHA_PARAM, 1.0) if inputs.ml_names else 1.0)


def has_search_space(inputs: EnsembleInputs) -> bool:
    return len(inputs.mc_names) > 1 or bool(inputs.ml_names)


def search(inputs: EnsembleInputs, score: Callable[[np.ndarray], float], *, n_trials: int, seed: int,
           alpha_range: tuple[float, float] = (0.2, 0.8), n_startup_trials: int = 10,
           storage: str | Path | None = None, study_name: str = "ensemble",
           enqueue: Sequence[tuple[str, Scheme]] = ()):
    """Run (or resume) the weight study until it holds `n_trials` complete trials; returns the study.

    Args:
        score: class indices of every crop -> objective value (higher is better).
        storage: SQLite file of the study (None: in memory); an existing study of the same name resumes.
        enqueue: (label, scheme) pairs tried first when the study is new (duplicates skipped).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = None
    if storage is not None:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(storage).resolve()}"
    study = optuna.create_study(study_name=study_name, storage=url, direction="maximize", load_if_exists=True)
    if not study.trials:
        seen: list[dict[str, float]] = []
        for label, scheme in enqueue:
            params = scheme_params(scheme, inputs)
            if params and params not in seen:
                seen.append(params)
                study.enqueue_trial(params, user_attrs={"origin": f"enqueued:{label}"})
    complete = optuna.trial.TrialState.COMPLETE
    while sum(t.state == complete for t in study.get_trials(deepcopy=False)) < n_trials:
        # A fresh seeded sampler per trial number: a resumed study samples what an uninterrupted one would.
        study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, len(study.trials)),
                                                   n_startup_trials=n_startup_trials)
        trial = study.ask()
        scheme = suggest_scheme(trial, inputs, alpha_range)
        study.tell(trial, score(blend(inputs, scheme).class_idx))
    return study


def trials_frame(study, inputs: EnsembleInputs) -> pd.DataFrame:
    """ENSEMBLE_TRIALS rows of a study."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        scheme = scheme_of_trial(trial.params, inputs)
        rows.append({
            "trial": trial.number, "state": trial.state.name,
            "origin": trial.user_attrs.get("origin", "sampled"),
            "value": float(trial.value) if trial.value is not None else float("nan"),
            "alpha": scheme.alpha, "weights": json.dumps(scheme.as_dict()["weights"], sort_keys=True),
        })
    frame = pd.DataFrame(rows, columns=tables.ENSEMBLE_TRIALS.column_names)
    return frame.astype({"trial": "int64", "state": "str", "origin": "str", "value": "float64",
                         "alpha": "float64", "weights": "str"})


def nested_estimate(inputs: EnsembleInputs, objective: Callable[..., float], *, n_trials: int, seed: int,
                    alpha_range: tuple[float, float], n_startup_trials: int,
                    enqueue: Sequence[tuple[str, Scheme]] = ()) -> dict[str, Any]:
    """Score of predictions whose weights never saw their own fold (module docstring).

    Per fold: an in-memory search on the other folds' rows, its best scheme applied to the fold.
    `objective(class_idx, rows)` scores the rows selected by the boolean mask.
    """
    predicted = np.zeros(len(inputs), dtype=np.int64)
    per_fold: dict[str, Any] = {}
    for fold in sorted(np.unique(inputs.folds)):
        inner = inputs.folds != fold
        if not inner.any():
            raise ValueError("nested estimate: needs at least two folds")
        study = search(inputs, lambda class_idx: objective(class_idx, inner), n_trials=n_trials,
                       seed=trial_seed(seed, 1_000_000 + int(fold)), alpha_range=alpha_range,
                       n_startup_trials=n_startup_trials, enqueue=enqueue)
        scheme = scheme_of_trial(study.best_params, inputs)
        held_out = inputs.folds == fold
        predicted[held_out] = blend(inputs, scheme).class_idx[held_out]
        per_fold[str(int(fold))] = {**scheme.as_dict(), "inner_best": round(study.best_value, 6),
                                    "held_out": round(objective(predicted, held_out), 6)}
    return {"score": objective(predicted), "per_fold": per_fold}


# ----------------------------------------------------------------------------- outputs

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


def run_search(*, multiclass_oof: Mapping[str, str], multilabel_oof: Mapping[str, str],
               multiclass_test: Mapping[str, str], multilabel_test: Mapping[str, str],
               weights_out: str, oof_classes_out: str, test_classes_out: str, trials_out: str, plot_out: str,
               storage: str, objective: str = "metric", oof_boxes: str | None = None, crops: str | None = None,
               boxes: str | None = None, margin: float = 16.0, groups: Sequence[Sequence[str]] = (),
               winner_alpha: float = 0.457, alpha_range: Sequence[float] = (0.2, 0.8), n_trials: int = 40,
               nested_trials: int = 20, n_startup_trials: int = 10, seed: int = 42, apply: str = "best",
               study_name: str = "ensemble") -> dict[str, Any]:
    """Rule entry: search the weights on OOF, write the OOF and test classes, return the summary.

    Args:
        multiclass_oof / multilabel_oof / *_test: model name -> LOGITS table path.
        objective: `metric` (needs oof_boxes = detector-1 OOF_BOXES, crops = CROPS, boxes =
            CURATED_BOXES) or `crop_f1`.
        groups: lists of models sharing a group in the winner's scheme (equal weight per group).
        nested_trials: trials of each inner search of the nested estimate (0 skips it).
        apply: which scheme classifies the test crops: best | equal | winner.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"ensemble.objective {objective!r} not in {OBJECTIVES}")
    if apply not in SCHEMES:
        raise ValueError(f"ensemble.apply {apply!r} not in {SCHEMES}")
    started = time.perf_counter()
    alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
    inputs = align_inputs({n: read_logits(p) for n, p in multiclass_oof.items()},
                          {n: read_logits(p) for n, p in multilabel_oof.items()})
    summary: dict[str, Any] = {"objective": objective, "oof_crops": len(inputs),
                               "multiclass_models": list(inputs.mc_names), "multilabel_models": list(inputs.ml_names),
                               "single_cell_crops": int(inputs.single_cell.sum()),
                               "blendable_crops": int((inputs.single_cell & inputs.has_ml).sum())}
    if objective == "metric":
        if not (oof_boxes and crops and boxes):
            raise ValueError("ensemble objective 'metric' needs the OOF boxes, the crop table and the curated boxes")
        score, counts = official_metric(inputs, tables.read_table(oof_boxes, tables.OOF_BOXES),
                                        tables.read_table(crops, tables.CROPS),
                                        tables.read_table(boxes, tables.CURATED_BOXES), margin=margin)
        summary.update(counts)
    else:
        score = CropF1(inputs)
    crop_f1 = CropF1(inputs)

    references = {"equal": equal_scheme(inputs), "winner": winner_scheme(inputs, groups, winner_alpha)}
    singles = {name: single_model_scheme(inputs, name) for name in inputs.mc_names}
    fingerprint = study_fingerprint(
        [*multiclass_oof.values(), *multilabel_oof.values(), *([oof_boxes, crops, boxes] if objective == "metric" else [])],
        {"objective": objective, "alpha_range": alpha_range, "margin": margin, "seed": seed,
         "n_startup_trials": n_startup_trials, "groups": [list(g) for g in groups], "winner_alpha": winner_alpha})
    name = f"{study_name}-{fingerprint}"
    if has_search_space(inputs):
        study = search(inputs, score, n_trials=n_trials, seed=seed, alpha_range=alpha_range,
                       n_startup_trials=n_startup_trials, storage=storage, study_name=name,
                       enqueue=list(references.items()))
        best = scheme_of_trial(study.best_params, inputs)
        trials = trials_frame(study, inputs)
    else:  # one MC model and no ML model: nothing to weigh
        best, trials = references["equal"], tables.empty_frame(tables.ENSEMBLE_TRIALS)
    schemes = {"best": best, **references}
    values = _scores(inputs, score, schemes)
    single_values = _scores(inputs, score, singles)
    best_single = max(single_values, key=single_values.get)
    nested = (nested_estimate(inputs, score, n_trials=nested_trials, seed=seed, alpha_range=alpha_range,
                              n_startup_trials=n_startup_trials, enqueue=list(references.items()))
              if nested_trials > 0 and has_search_space(inputs) and len(np.unique(inputs.folds)) > 1 else None)
    applied = schemes[apply]

    tables.write_table(trials, trials_out, tables.ENSEMBLE_TRIALS)
    tables.write_table(classes_frame(inputs, blend(inputs, applied)), oof_classes_out, tables.ENSEMBLE_CLASSES)
    test_inputs = align_inputs({n: read_logits(multiclass_test[n]) for n in inputs.mc_names},
                               {n: read_logits(multilabel_test[n]) for n in inputs.ml_names})
    test_result = blend(test_inputs, applied)
    tables.write_table(classes_frame(test_inputs, test_result), test_classes_out, tables.ENSEMBLE_CLASSES)
    fallback = most_frequent_class(inputs)
    payload = {"scheme": apply, **applied.as_dict(), "multiclass": list(inputs.mc_names),
               "multilabel": list(inputs.ml_names), "fallback_class": fallback, "objective": objective,
               "oof_score": round(values[apply], 6), "study": name}
    Path(weights_out).parent.mkdir(parents=True, exist_ok=True)
    Path(weights_out).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    plot_history(trials, {"equal weights": values["equal"], "winner scheme": values["winner"],
                          f"best single ({best_single})": single_values[best_single],
                          "nested estimate": nested["score"] if nested else None},
                 plot_out, f"ensemble weight search ({objective}, {len(inputs)} OOF crops)")
    summary.update({
        "best_oof": round(values["best"], 6), "equal_weights_oof": round(values["equal"], 6),
        "winner_scheme_oof": round(values["winner"], 6), "best_single_model_oof": round(single_values[best_single], 6),
        "best_single_model": best_single, "single_models": {k: round(v, 6) for k, v in single_values.items()},
        "nested_estimate": round(nested["score"], 6) if nested else None,
        "optimism": round(values["best"] - nested["score"], 6) if nested else None,
        "nested": nested["per_fold"] if nested else None,
        "crop_macro_f1": {label: round(crop_f1(blend(inputs, s).class_idx), 6) for label, s in schemes.items()},
        "weights": best.as_dict(), "winner_weights": references["winner"].as_dict(),
        "applied": apply, "study": name, "n_trials": int((trials["state"] == "COMPLETE").sum()),
        "test_crops": len(test_inputs), "test_blended_crops": int(test_result.blended.sum()),
        "test_class_counts": {str(k): int(v) for k, v in
                              pd.Series(CLASS_CODES[test_result.class_idx]).value_counts().items()},
        "fallback_class": fallback, "search_seconds": round(time.perf_counter() - started, 3),
    })
    LOGGER.info("ensemble: best OOF %.4f (equal %.4f, winner %.4f, best single %.4f, nested %s)",
                values["best"], values["equal"], values["winner"], single_values[best_single],
                summary["nested_estimate"])
    return summary
