"""The Optuna search of the ensemble weights (docs/method.md §9.2 and beyond).

The winner fixed the group weights by hand (0.25 each) and grid-searched alpha on OOF crop macro
F1. Here a seeded TPE study searches the per-model MC weights (normalised to sum 1) and alpha
together. The reference schemes (equal weights, the winner's scheme, and every multiclass model
alone) are enqueued as the first trials, so the search space contains them and the best trial is
never worse than any of them on the OOF. The study lives in an SQLite file: a killed or extended
search resumes. Trial k samples with its own seed derived from (seed, k), so a resumed study
proposes exactly what an uninterrupted one would, and never repeats a startup point. Because the
best OOF score is optimistic (the weights were tuned on it), a nested estimate is reported as
well: per fold, a fresh search on the other folds, its best weights applied to the held-out fold,
and all held-out predictions scored together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.ensemble.blending import Scheme, blend, normalised
from leukoflow.ensemble.inputs import EnsembleInputs

WEIGHT_PARAM = "w_"
ALPHA_PARAM = "alpha"


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
           alpha_range: tuple[float, float], n_startup_trials: int, storage: str | Path | None, study_name: str,
           enqueue: Sequence[tuple[str, Scheme]]):
    """Run (or resume) the weight study until it holds `n_trials` complete trials and every enqueued one.

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
    if interrupted_mid_trial(study):
        # A kill during a trial leaves it RUNNING; its number cannot be asked again, so the trials
        # after it would shift. Starting over (same seeds) gives exactly the uninterrupted study.
        optuna.delete_study(study_name=study_name, storage=url)
        study = optuna.create_study(study_name=study_name, storage=url, direction="maximize")
    if not study.trials:
        seen: list[dict[str, float]] = []
        for label, scheme in enqueue:
            params = scheme_params(scheme, inputs)
            if params and params not in seen:
                seen.append(params)
                study.enqueue_trial(params, user_attrs={"origin": f"enqueued:{label}"})
    complete = optuna.trial.TrialState.COMPLETE
    enqueued = sum(t.user_attrs.get("origin", "").startswith("enqueued") for t in study.get_trials(deepcopy=False))
    while sum(t.state == complete for t in study.get_trials(deepcopy=False)) < max(n_trials, enqueued):
        # A fresh seeded sampler per trial number: a resumed study samples what an uninterrupted one would.
        study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, len(study.trials)),
                                                   n_startup_trials=n_startup_trials)
        trial = study.ask()
        scheme = suggest_scheme(trial, inputs, alpha_range)
        study.tell(trial, score(blend(inputs, scheme).class_idx))
    return study


def interrupted_mid_trial(study) -> bool:
    """A stored study with a trial that neither finished nor waits its turn (RUNNING or FAIL)."""
    from optuna.trial import TrialState

    return any(t.state not in (TrialState.COMPLETE, TrialState.WAITING) for t in study.get_trials(deepcopy=False))


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
                    enqueue: Sequence[tuple[str, Scheme]]) -> dict[str, Any]:
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
                       n_startup_trials=n_startup_trials, storage=None, study_name=f"nested-{int(fold)}",
                       enqueue=enqueue)
        scheme = scheme_of_trial(study.best_params, inputs)
        held_out = inputs.folds == fold
        predicted[held_out] = blend(inputs, scheme).class_idx[held_out]
        per_fold[str(int(fold))] = {**scheme.as_dict(), "inner_best": round(study.best_value, 6),
                                    "held_out": round(objective(predicted, held_out), 6)}
    return {"score": objective(predicted), "per_fold": per_fold}


