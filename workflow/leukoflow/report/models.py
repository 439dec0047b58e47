"""Report items of the model stages: detector OOF GIoU and mAP per fold, per-class F1, ensemble weights.

Rule entries (paths in, summary out): `plot_detector_oof`, `plot_per_class_f1`,
`tabulate_ensemble_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.constants import CLASSES
from leukoflow.engine.runtime import read_json
from leukoflow.report.pages import save_figure, write_html


# ----------------------------------------------------------------------------- detection

def oof_giou(oof: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Per annotated cell: the GIoU of its matched OOF box (official matching), with the fold.

    oof: OOF_BOXES of one detector; boxes: CURATED_BOXES. Returns columns fold, giou.
    """
    from leukoflow import metric
    from leukoflow.boxes import as_submission, truth_table

    truth = truth_table(boxes[boxes["name"].isin(set(oof["name"]))])
    if not len(truth):
        return pd.DataFrame({"fold": pd.Series([], dtype="int64"), "giou": pd.Series([], dtype="float64")})
    per_row = metric.score(truth, as_submission(oof, truth)).per_row
    fold_of = oof.drop_duplicates("name").set_index("name")["fold"]
    return pd.DataFrame({"fold": per_row["NAME"].map(fold_of).astype("int64").to_numpy(),
                         "giou": per_row["giou"].astype(float).to_numpy()})


def detector_folds(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """mAP50, mAP50-95 and mean rescaled GIoU per detector and fold, from each `fit_oof` summary."""
    rows = [{"detector": name, "fold": int(fold), "map50": entry.get("map50"), "map50_95": entry.get("map50_95"),
             "mean_rescaled_giou": entry.get("mean_rescaled_giou"), "train_seconds": entry.get("train_seconds")}
            for name, summary in summaries.items() for fold, entry in summary.get("per_fold", {}).items()]
    frame = pd.DataFrame(rows, columns=["detector", "fold", "map50", "map50_95", "mean_rescaled_giou",
                                        "train_seconds"])
    return frame.astype({c: float for c in frame.columns[2:]}).sort_values(["detector", "fold"]).reset_index(drop=True)


def draw_detector_oof(gious: Mapping[str, pd.DataFrame], folds: pd.DataFrame, path: str | Path, *,
                      bins: int) -> None:
    """Left: histogram of OOF GIoU per detector; right: mAP50 / mAP50-95 per detector and fold."""
    from matplotlib.figure import Figure  # here: the table entries of this module need no matplotlib

    figure = Figure(figsize=(12, 4.2), layout="constrained")
    histogram, bars = figure.subplots(1, 2)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for name, frame in gious.items():
        histogram.hist(frame["giou"], bins=edges, histtype="step", linewidth=1.5,
                       label=f"{name} (n={len(frame)}, mean {frame['giou'].mean():.3f})")
    histogram.set_xlabel("GIoU of the matched OOF box")
    histogram.set_ylabel("annotated cells")
    histogram.set_title("detector OOF GIoU", fontsize=10)
    histogram.legend(fontsize=8, loc="upper left")
    labels = [f"{row.detector}\nfold {row.fold}" for row in folds.itertuples(index=False)]
    positions = np.arange(len(folds))
    bars.bar(positions - 0.2, folds["map50"].fillna(0.0), 0.4, label="mAP50")
    bars.bar(positions + 0.2, folds["map50_95"].fillna(0.0), 0.4, label="mAP50-95")
    bars.set_xticks(positions, labels, fontsize=8)
    bars.set_ylim(0.0, 1.0)
    bars.set_ylabel("validation mAP (last epoch)")
    bars.set_title("mAP per fold", fontsize=10)
    bars.legend(fontsize=8)
    save_figure(figure, path)


# ----------------------------------------------------------------------------- classification

def per_class_f1(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Long table model, class, f1, support from the classification summary's `per_class_f1`."""
    rows = [{"model": model, "class": name, "f1": float(entry["f1"]), "support": int(entry["support"])}
            for model, result in summary.get("models", {}).items()
            for name, entry in result.get("per_class_f1", {}).items()]
    return pd.DataFrame(rows, columns=["model", "class", "f1", "support"])


def draw_per_class_f1(frame: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: OOF F1 of every class (CLASSES order, then any other output) for each model."""
    order = [c for c in CLASSES if c in set(frame["class"])] + sorted(set(frame["class"]) - set(CLASSES))
    models = list(dict.fromkeys(frame["model"]))
    from matplotlib.figure import Figure  # here: the table entries of this module need no matplotlib

    figure = Figure(figsize=(14, 4.5), layout="constrained")
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(models), 1)
    for k, model in enumerate(models):
        scores = frame[frame["model"] == model].set_index("class")["f1"].reindex(order)
        axis.bar(np.arange(len(order)) + (k - (len(models) - 1) / 2) * width, scores.fillna(0.0), width, label=model)
    support = frame.groupby("class")["support"].max().reindex(order).fillna(0).astype(int)
    axis.set_xticks(range(len(order)), [f"{c}\n({n})" for c, n in support.items()], fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel("OOF F1")
    axis.set_title("per-class OOF F1 (class, support)", fontsize=10)
    axis.legend(fontsize=8)
    save_figure(figure, path)


# ----------------------------------------------------------------------------- ensemble

def ensemble_tables(weights: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The applied scheme's weights (with the winner scheme's beside them) and each scheme's OOF score."""
    applied, winner = summary.get("weights", {}), summary.get("winner_weights", {})
    models = list(dict.fromkeys([*applied.get("weights", {}), *winner.get("weights", {})]))
    table = pd.DataFrame({
        "model": models + ["alpha (single-cell multiclass share)"],
        "searched": [applied.get("weights", {}).get(m, np.nan) for m in models] + [applied.get("alpha", np.nan)],
        "winner scheme": [winner.get("weights", {}).get(m, np.nan) for m in models] + [winner.get("alpha", np.nan)],
    })
    schemes = {"searched (best)": summary.get("best_oof"), "equal weights": summary.get("equal_weights_oof"),
               "winner scheme": summary.get("winner_scheme_oof"),
               f"best single model ({summary.get('best_single_model', '')})": summary.get("best_single_model_oof"),
               "nested estimate (unbiased)": summary.get("nested_estimate")}
    scores = pd.DataFrame({"scheme": list(schemes),
                           "oof": [np.nan if v is None else float(v) for v in schemes.values()]})
    facts = pd.DataFrame({"setting": ["applied to test", "objective", "completed trials", "study"],
                          "value": [str(weights.get("scheme", summary.get("applied", ""))),
                                    str(summary.get("objective", "")), str(summary.get("n_trials", "")),
                                    str(weights.get("study", summary.get("study", "")))]})
    return {"weights": table, f"OOF objective per scheme ({summary.get('objective', '')})": scores, "search": facts}


# ----------------------------------------------------------------------------- rule entries

def plot_detector_oof(*, oof: Sequence[str], summaries: Sequence[str], boxes: str, plot: str, table: str,
                      detectors: Sequence[str], bins: int) -> dict[str, Any]:
    """Rule entry: OOF GIoU histogram and mAP per fold (figure), the per-fold figures (HTML).

    `oof` and `summaries` hold one file per detector, in the order of `detectors`.
    """
    if not len(oof) == len(summaries) == len(detectors):
        raise ValueError(f"plot_detector_oof: {len(oof)} OOF tables and {len(summaries)} summaries "
                         f"for {len(detectors)} detectors {list(detectors)}")
    box_table = tables.read_table(boxes, tables.CURATED_BOXES)
    gious = {name: oof_giou(tables.read_table(path, tables.OOF_BOXES), box_table) for name, path in zip(detectors, oof)}
    folds = detector_folds({name: read_json(path) for name, path in zip(detectors, summaries)})
    draw_detector_oof(gious, folds, plot, bins=bins)
    write_html({"validation mAP and OOF GIoU per detector and fold": folds}, table, "Detectors per fold")
    return {f"{name}_mean_giou": float(frame["giou"].mean()) for name, frame in gious.items()}


def plot_per_class_f1(*, classification_summary: str, plot: str) -> dict[str, Any]:
    """Rule entry: per-class OOF F1 of every classifier."""
    frame = per_class_f1(read_json(classification_summary))
    draw_per_class_f1(frame, plot)
    return {"models": int(frame["model"].nunique())}


def tabulate_ensemble_weights(*, weights: str, ensemble_summary: str, table: str) -> dict[str, Any]:
    """Rule entry: the ensemble weights and each scheme's OOF objective as an HTML page."""
    write_html(ensemble_tables(read_json(weights), read_json(ensemble_summary)), table, "Ensemble weights")
    return {}
