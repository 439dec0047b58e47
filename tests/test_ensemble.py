"""Ensemble weights search (leukoflow.ensemble) on small synthetic logits, boxes and crops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukoflow.ensemble.blending import Scheme, blend, equal_scheme, normalised, winner_scheme
from leukoflow.ensemble.inputs import EnsembleInputs, align_inputs
from leukoflow.ensemble.objectives import CropF1, official_metric
from leukoflow.ensemble.offsets import fit_offsets, nested_offsets
from leukoflow.ensemble.study import search
from leukoflow.ensemble.weight_search import search_ensemble_weights

from leukoflow import metric

from leukoflow import tables
from leukoflow.constants import CLASSES

N_FOLDS = 3
MARGIN = 4.0


def _logits_frame(ids, names, folds, truth, logits) -> pd.DataFrame:
    frame = pd.DataFrame({
        "id": pd.Series(ids, dtype="str"), "name": pd.Series(names, dtype="str"),
        "fold": np.asarray(folds, dtype="int64"), "trustii_id": np.full(len(ids), -1, dtype="int64"),
        "truth": np.asarray(truth, dtype="int64"),
        "truth_labels": pd.Series([str(t) if t >= 0 else "" for t in truth], dtype="str"),
    })
    columns = pd.DataFrame(np.asarray(logits, float), columns=[f"logit_{k}" for k in range(logits.shape[1])])
    return pd.concat([frame, columns], axis=1)


def make_world(seed: int = 0, n_images: int = 36) -> dict:
    """Images with 1-3 cells, their boxes, detector OOF boxes, crops and the logits of 2 MC + 1 ML models."""
    rng = np.random.default_rng(seed)
    box_rows, oof_rows, crop_rows = [], [], []
    crop_ids, crop_names, crop_folds, crop_truth = [], [], [], []
    image_truth = {}
    row = 0
    for image in range(n_images):
        name = f"img{image:03d}.jpg"
        fold = image % N_FOLDS
        n_cells = 1 if image % 2 == 0 else int(rng.integers(2, 4))
        labels = rng.integers(0, 5, size=n_cells)
        image_truth[name] = (fold, labels)
        for k, label in enumerate(labels):
            x, y = 10 + 60 * k, 10 + rng.integers(0, 20)
            truth_box = np.array([x, y, x + 40, y + 40], float)
            box_rows.append({"row": row, "name": name, "x1": truth_box[0], "y1": truth_box[1], "x2": truth_box[2],
                             "y2": truth_box[3], "label": CLASSES[label], "class_idx": int(label), "clipped": False})
            row += 1
            detected = truth_box + rng.integers(-3, 4, size=4)
            oof_rows.append({"detector": "det1", "fold": fold, "name": name, "rank": k, "x1": detected[0],
                             "y1": detected[1], "x2": detected[2], "y2": detected[3], "score": 0.9, "padded": False})
            window = truth_box + np.array([-MARGIN, -MARGIN, MARGIN, MARGIN]) + rng.integers(-2, 3, size=4)
            crop_id = f"{name}#{k}"
            crop_rows.append({"crop_id": crop_id, "name": name, "split": "train", "fold": fold, "x1": window[0],
                              "y1": window[1], "x2": window[2], "y2": window[3], "score": 0.9,
                              "label": CLASSES[label], "class_idx": int(label), "trustii_id": -1, "source": "det2_oof"})
            crop_ids.append(crop_id)
            crop_names.append(name)
            crop_folds.append(fold)
            crop_truth.append(int(label))
    truth = np.array(crop_truth)
    onehot = np.eye(len(CLASSES))[truth]
    mc_a = 2.5 * onehot + rng.normal(0, 1.0, size=onehot.shape)
    mc_b = 1.0 * onehot + rng.normal(0, 1.0, size=onehot.shape)
    mc_b = np.hstack([mc_b, rng.normal(0, 1, size=(len(truth), 1))])  # a Background logit, dropped by the ensemble
    names = sorted(image_truth)
    ml_onehot = np.zeros((len(names), len(CLASSES)))
    for i, name in enumerate(names):
        ml_onehot[i, image_truth[name][1]] = 1
    ml = 4 * ml_onehot - 2 + rng.normal(0, 1.0, size=ml_onehot.shape)
    ml_truth = [int(image_truth[n][1][0]) if len(set(image_truth[n][1])) == 1 else -1 for n in names]
    return {
        "mc": {"mc_a": _logits_frame(crop_ids, crop_names, crop_folds, truth, mc_a),
               "mc_b": _logits_frame(crop_ids, crop_names, crop_folds, truth, mc_b)},
        "ml": {"ml": _logits_frame(names, names, [image_truth[n][0] for n in names], ml_truth, ml)},
        "boxes": pd.DataFrame(box_rows).astype({"x1": float, "y1": float, "x2": float, "y2": float,
                                                "name": "str", "label": "str"}),
        "oof": pd.DataFrame(oof_rows).astype({"x1": float, "y1": float, "x2": float, "y2": float, "score": float,
                                              "name": "str", "detector": "str"}),
        "crops": pd.DataFrame(crop_rows).astype({"x1": float, "y1": float, "x2": float, "y2": float, "score": float,
                                                 "name": "str", "split": "str", "label": "str", "source": "str",
                                                 "crop_id": "str"}),
    }


@pytest.fixture(scope="module")
def world() -> dict:
    return make_world()


@pytest.fixture(scope="module")
def inputs(world) -> EnsembleInputs:
    return align_inputs(world["mc"], world["ml"])


def test_blend_uses_the_multilabel_model_only_on_single_cell_images(inputs):
    mc_only = blend(inputs, Scheme({"mc_a": 1.0, "mc_b": 0.0}, 1.0))
    ml_heavy = blend(inputs, Scheme({"mc_a": 1.0, "mc_b": 0.0}, 0.0))
    multi = ~inputs.single_cell
    assert np.array_equal(mc_only.class_idx, inputs.mc_logits[0].argmax(1))
    assert np.array_equal(ml_heavy.class_idx[multi], mc_only.class_idx[multi])
    assert np.array_equal(ml_heavy.class_idx[~multi], inputs.ml_logits[~multi].argmax(1))
    assert ml_heavy.blended.sum() == inputs.single_cell.sum() and not mc_only.blended.any()


def test_background_logit_is_dropped_and_weights_are_normalised(inputs):
    assert inputs.mc_logits.shape == (2, len(inputs), len(CLASSES))
    assert normalised({"a": 2.0, "b": 6.0}, ["a", "b"]) == {"a": 0.25, "b": 0.75}
    assert normalised({"a": 0.0, "b": 0.0}, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    winner = winner_scheme(inputs, [["mc_a", "mc_b"]], 0.457)
    assert winner.weights == pytest.approx({"mc_a": 0.5, "mc_b": 0.5}) and winner.alpha == 0.457


def test_misaligned_multiclass_tables_are_refused(world):
    shorter = world["mc"]["mc_b"].iloc[1:]
    with pytest.raises(ValueError, match="mc_b.*other crops"):
        align_inputs({"mc_a": world["mc"]["mc_a"], "mc_b": shorter})


def _independent_submission(world, predicted_by_crop: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth and submission built without the ensemble's code: rank k answers truth row k, class of crop k."""
    boxes = world["boxes"].sort_values(["name", "row"])
    truth = pd.DataFrame({"trustii_id": boxes["row"], "NAME": boxes["name"], "x1": boxes["x1"], "y1": boxes["y1"],
                          "x2": boxes["x2"], "y2": boxes["y2"], "class": boxes["label"]})
    oof = world["oof"].sort_values(["name", "rank"])
    submission = pd.DataFrame({"trustii_id": boxes["row"].to_numpy(), "NAME": oof["name"].to_numpy(),
                               "x1": oof["x1"].to_numpy(), "y1": oof["y1"].to_numpy(), "x2": oof["x2"].to_numpy(),
                               "y2": oof["y2"].to_numpy(),
                               "class": [predicted_by_crop[f"{n}#{k}"] for n, k in zip(oof["name"], oof["rank"])]})
    return truth, submission


def test_metric_objective_equals_the_official_score(world, inputs):
    objective, counts = official_metric(inputs, world["oof"], world["crops"], world["boxes"], margin=MARGIN)
    assert counts["metric_cells"] == len(world["boxes"])
    scheme = Scheme({"mc_a": 0.3, "mc_b": 0.7}, 0.6)
    predicted = blend(inputs, scheme).class_idx
    truth, submission = _independent_submission(world, dict(zip(inputs.ids, np.array(CLASSES)[predicted])))
    expected = metric.score(truth, submission)
    assert objective(predicted) == pytest.approx(expected.score, abs=1e-12)
    fold0 = inputs.folds == 0
    names0 = set(inputs.names[fold0])
    subset = metric.score(truth[truth["NAME"].isin(names0)], submission[submission["NAME"].isin(names0)])
    assert objective(predicted, fold0) == pytest.approx(subset.score, abs=1e-12)


SEARCH = dict(n_startup_trials=3, alpha_range=(0.0, 1.0), storage=None, study_name="test", enqueue=[])


def _trials(study) -> list[tuple]:
    return [(t.number, tuple(sorted(t.params.items())), t.value) for t in study.trials]


def test_search_is_deterministic_for_a_seed(inputs):
    score = CropF1(inputs)
    first = search(inputs, score, n_trials=6, seed=7, **SEARCH)
    second = search(inputs, score, n_trials=6, seed=7, **SEARCH)
    other = search(inputs, score, n_trials=6, seed=8, **SEARCH)
    assert _trials(first) == _trials(second)
    assert _trials(first) != _trials(other)


def test_resumed_study_continues_like_an_uninterrupted_one(inputs, tmp_path):
    score = CropF1(inputs)
    enqueue = [("equal", equal_scheme(inputs)), ("winner", winner_scheme(inputs, [], 0.457))]
    storage = tmp_path / "study.db"
    common = dict(n_startup_trials=3, alpha_range=(0.0, 1.0), study_name="test", enqueue=enqueue)
    short = search(inputs, score, n_trials=4, seed=3, storage=storage, **common)
    assert len(short.trials) == 4
    resumed = search(inputs, score, n_trials=7, seed=3, storage=storage, **common)
    assert len(resumed.trials) == 7
    params = [tuple(sorted(t.params.items())) for t in resumed.trials]
    assert len(set(params)) == len(params)
    straight = search(inputs, score, n_trials=7, seed=3, storage=tmp_path / "other.db", **common)
    assert _trials(resumed) == _trials(straight)
    assert [t.user_attrs.get("origin") for t in resumed.trials[:2]] == ["enqueued:equal", "enqueued:winner"]


def test_a_study_killed_mid_trial_resumes_to_the_uninterrupted_result(inputs, tmp_path):
    import optuna

    score = CropF1(inputs)
    enqueue = [("equal", equal_scheme(inputs))]
    common = dict(n_trials=5, seed=3, n_startup_trials=3, alpha_range=(0.0, 1.0), study_name="test", enqueue=enqueue)
    storage = tmp_path / "study.db"
    search(inputs, score, **{**common, "n_trials": 2}, storage=storage)
    stale = optuna.load_study(study_name="test", storage=f"sqlite:///{storage}")
    stale.ask()  # the kill: a trial asked and never told stays RUNNING in the file
    resumed = search(inputs, score, **common, storage=storage)
    straight = search(inputs, score, **common, storage=tmp_path / "other.db")
    assert _trials(resumed) == _trials(straight)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in resumed.trials)


def _write_inputs(world, tmp_path) -> dict:
    paths = {}
    for kind in ("mc", "ml"):
        for name, frame in world[kind].items():
            for split in ("oof", "test"):
                path = tmp_path / f"{name}_{split}.parquet"
                if split == "test":
                    trustii = np.arange(100, 100 + len(frame)) if kind == "mc" else np.full(len(frame), -1)
                    frame = frame.assign(fold=-1, truth=-1, truth_labels="", trustii_id=trustii)
                frame.to_parquet(path, index=False)
                paths[(kind, name, split)] = str(path)
    tables.write_table(world["oof"], tmp_path / "oof_boxes.parquet", tables.OOF_BOXES)
    tables.write_table(world["crops"], tmp_path / "crops.parquet", tables.CROPS)
    tables.write_table(world["boxes"], tmp_path / "boxes.parquet", tables.CURATED_BOXES)
    return paths


def _run(world, tmp_path, **overrides) -> tuple[dict, object]:
    paths = _write_inputs(world, tmp_path)
    pick = (lambda kind, split: [paths[(kind, name, split)] for name in world[kind]])
    out = tmp_path / "ensemble"
    settings = dict(objective="metric", n_trials=8, nested_trials=4, n_startup_trials=4, alpha_range=[0, 1],
                    winner_alpha=0.457, groups=[], apply="best", study_name="ensemble", seed=1,
                    class_offsets={"search": True, "apply": False, "max_abs": 1.0, "steps": 5, "passes": 1})
    summary = search_ensemble_weights(
        mc_oof=pick("mc", "oof"), ml_oof=pick("ml", "oof"), mc_test=pick("mc", "test"), ml_test=pick("ml", "test"),
        oof_boxes=str(tmp_path / "oof_boxes.parquet"), crops=str(tmp_path / "crops.parquet"),
        boxes=str(tmp_path / "boxes.parquet"), weights=str(out / "weights.json"),
        oof_classes=str(out / "oof_classes.parquet"), test_classes=str(out / "test_classes.parquet"),
        trials=str(out / "trials.csv"), plot=str(out / "history.png"), storage=str(out / "study.db"),
        multiclass=list(world["mc"]), multilabel=list(world["ml"]), margin=MARGIN, **{**settings, **overrides})
    return summary, out


def test_run_search_writes_valid_outputs_and_beats_its_baselines(world, tmp_path):
    summary, out = _run(world, tmp_path)
    assert summary["n_trials"] == 8 and summary["alpha_range"] == [0.0, 1.0]
    assert summary["best_oof"] >= max(summary["equal_weights_oof"], summary["winner_scheme_oof"]) - 1e-12
    assert summary["best_oof"] >= summary["best_single_model_oof"]
    assert summary["nested_estimate"] is not None and set(summary["nested"]) == {"0", "1", "2"}
    assert summary["best_single_model"] in {"mc_a", "mc_b"}
    weights = json.loads((out / "weights.json").read_text())
    assert set(weights["weights"]) == {"mc_a", "mc_b"} and sum(weights["weights"].values()) == pytest.approx(1, abs=1e-5)
    assert weights["class_offsets"] is None  # searched and reported, not applied
    offsets = summary["class_offsets"]
    assert set(offsets["offsets"]) == set(CLASSES) and offsets["oof"] >= summary["best_oof"] - 1e-12
    assert offsets["nested_estimate"] is not None and set(offsets["nested"]) == {"0", "1", "2"}
    test_classes = tables.read_table(out / "test_classes.parquet", tables.ENSEMBLE_CLASSES)
    assert len(test_classes) == len(world["mc"]["mc_a"]) and (test_classes["trustii_id"] >= 100).all()
    trials = tables.read_table(out / "trials.csv", tables.ENSEMBLE_TRIALS)
    assert len(trials) == 8 and (out / "history.png").stat().st_size > 0
    assert {"enqueued:single:mc_a", "enqueued:single:mc_b"} <= set(trials["origin"])


def test_the_ensemble_never_loses_to_its_best_member(tmp_path):
    """A useful model, a noisy one and a noisy multilabel model: one sampled trial cannot find the
    strong model alone, but its enqueued trial does (more enqueued trials than n_trials all run)."""
    world = make_world(seed=3)
    rng = np.random.default_rng(5)
    ml = world["ml"]["ml"]
    world["ml"]["ml"] = ml.assign(**{f"logit_{k}": rng.normal(0, 3, len(ml)) for k in range(len(CLASSES))})
    weak = world["mc"]["mc_b"]
    world["mc"]["mc_b"] = weak.assign(**{f"logit_{k}": rng.normal(0, 3, len(weak)) for k in range(len(CLASSES))})
    summary, out = _run(world, tmp_path, n_trials=1, nested_trials=0, objective="crop_f1")
    assert summary["n_trials"] == 4  # equal, winner, mc_a alone, mc_b alone
    assert summary["best_oof"] >= summary["best_single_model_oof"] > summary["equal_weights_oof"]
    assert summary["weights"]["alpha"] == 1.0  # the noisy multilabel model is left out


def test_class_offsets_correct_a_biased_blend_and_never_lose_where_fitted():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400)
    probability = np.eye(4)[truth] * 0.5 + rng.random((400, 4)) * 0.6
    probability[:, 2] *= 0.4  # class 2 under-called
    folds = np.arange(400) % 2

    def objective(class_idx, rows=None):
        from sklearn.metrics import f1_score
        rows = np.ones(len(truth), bool) if rows is None else rows
        return f1_score(truth[rows], class_idx[rows], average="macro")

    plain = objective(probability.argmax(1))
    offsets, value = fit_offsets(probability, objective, max_abs=1.5, steps=7, passes=2)
    assert value >= plain and value > plain + 0.05 and offsets[2] > 0
    nested = nested_offsets(probability, folds, objective, max_abs=1.5, steps=7, passes=2)
    assert nested["score"] > plain and set(nested["per_fold"]) == {"0", "1"}
