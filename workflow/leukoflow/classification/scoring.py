"""Losses and scores of the classifiers, and the logits tables they are read from.

One score is used for every kind of model, for checkpoint selection and for the reported figure:
`argmax_macro_f1`, the macro F1 of the argmax over the 23 class logits on the items with exactly
one true class. It is what the ensemble consumes: the multiclass argmax on every crop, and the
multilabel model's sigmoid inside the single-cell blend (docs/method.md §9.1). The per-label
thresholded F1 of a multilabel model (sigmoid > 0.5) is reported under its own name only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leukoflow.classification.items import ItemSet, labels_to_multi_hot
from leukoflow.classification.spec import ClassifierSpec
from leukoflow.constants import CLASSES

if TYPE_CHECKING:
    import torch

N_CLASSES = len(CLASSES)


def batch_loss(spec: ClassifierSpec, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy, or the winner's focal BCE: alpha * (1 - pt)^gamma * bce, mean."""
    import torch  # here, not at the top: the light entries (evaluation, pseudo-labels) score without torch
    import torch.nn.functional as F

    logits = logits.float()
    if spec.loss == "cross_entropy":
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.exp(-bce)
    return (spec.focal_alpha * (1.0 - pt) ** spec.focal_gamma * bce).mean()


def single_class_rows(target: np.ndarray) -> np.ndarray:
    """Items with exactly one true class among the 23 (no Background, no multi-class image)."""
    return (target[:, :N_CLASSES].sum(1) == 1) & (target[:, N_CLASSES:].sum(1) == 0)


def argmax_macro_f1(target: np.ndarray, logits: np.ndarray) -> float:
    """Macro F1 of argmax(23 class logits) on the single-class items (module docstring)."""
    from sklearn.metrics import f1_score

    rows = single_class_rows(target)
    if not rows.any():
        return float("nan")
    truth = target[rows, :N_CLASSES].argmax(1)
    return float(f1_score(truth, logits[rows, :N_CLASSES].argmax(1), average="macro", zero_division=0))


def thresholded_macro_f1(target: np.ndarray, logits: np.ndarray) -> float:
    """Multilabel macro F1 at sigmoid > 0.5 over the labels present in truth or prediction."""
    from sklearn.metrics import f1_score

    predicted = (logits > 0).astype(int)
    present = np.flatnonzero(target.any(0) | predicted.any(0))
    if not len(target) or not len(present):
        return float("nan")
    return float(f1_score(target[:, present].astype(int), predicted[:, present], average="macro", zero_division=0))


def per_class_f1(target: np.ndarray, logits: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """F1 (argmax, single-class items) and support of every class (0 without truth or prediction)."""
    from sklearn.metrics import f1_score

    rows = single_class_rows(target)
    truth = target[rows, :N_CLASSES].argmax(1)
    predicted = logits[rows, :N_CLASSES].argmax(1)
    scores = f1_score(truth, predicted, labels=list(range(N_CLASSES)), average=None, zero_division=0)
    support = target.sum(0).astype(int)
    return {name: {"f1": round(float(scores[k]) if k < N_CLASSES else 0.0, 6), "support": int(support[k])}
            for k, name in enumerate(class_names)}


def selection_score(spec: ClassifierSpec, target: np.ndarray, logits: np.ndarray) -> float:
    """What picks the best checkpoint (higher is better): argmax macro F1, or minus the validation loss."""
    if spec.selection == "val_loss":
        import torch

        with torch.no_grad():
            return -float(batch_loss(spec, torch.from_numpy(logits), torch.from_numpy(target)))
    return argmax_macro_f1(target, logits)


# ----------------------------------------------------------------------------- logits tables

def logits_frame(items: ItemSet, logits: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    """A LOGITS table (schema `tables.logits_schema(K)`) for the given items."""
    single = np.where(items.target.sum(1) == 1, items.target.argmax(1), -1).astype("int64")
    labels = ["|".join(str(k) for k in np.flatnonzero(row)) for row in items.target]
    frame = pd.DataFrame({
        "id": pd.Series(items.ids, dtype="str"), "name": pd.Series(items.names, dtype="str"),
        "fold": np.asarray(folds, dtype="int64"), "trustii_id": items.trustii.astype("int64"),
        "truth": single, "truth_labels": pd.Series(labels, dtype="str"),
    })
    logit_columns = pd.DataFrame(logits.astype("float64"), columns=[f"logit_{k}" for k in range(logits.shape[1])])
    return pd.concat([frame, logit_columns], axis=1)


def frame_targets(frame: pd.DataFrame, n_outputs: int) -> np.ndarray:
    return labels_to_multi_hot(frame["truth_labels"].tolist(), n_outputs)


def frame_logits(frame: pd.DataFrame) -> np.ndarray:
    columns = [c for c in frame.columns if c.startswith("logit_")]
    return frame[columns].to_numpy(np.float64)


def evaluate_oof(spec: ClassifierSpec, frame: pd.DataFrame) -> dict[str, Any]:
    """Per-fold and overall OOF argmax macro F1 and per-class F1 of one model's OOF logits table."""
    target, logits = frame_targets(frame, spec.n_outputs), frame_logits(frame)
    folds = frame["fold"].to_numpy()
    result = {
        "kind": spec.kind, "rows": len(frame), "oof_macro_f1": round(argmax_macro_f1(target, logits), 6),
        "scored_rows": int(single_class_rows(target).sum()),
        "fold_macro_f1": {int(fold): round(argmax_macro_f1(target[folds == fold], logits[folds == fold]), 6)
                          for fold in sorted(np.unique(folds))},
        "per_class_f1": per_class_f1(target, logits, spec.class_names),
    }
    if spec.kind == "multilabel":
        result["multilabel_thresholded_macro_f1"] = round(thresholded_macro_f1(target, logits), 6)
    return result


def plot_confusion(frames: dict[str, tuple[str, pd.DataFrame, Sequence[str]]], path: str | Path) -> None:
    """One confusion-matrix panel per model: argmax vs truth on the single-class items."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    count = max(1, len(frames))
    figure = Figure(figsize=(7.5 * count, 7))
    for panel, (name, (kind, frame, class_names)) in enumerate(frames.items()):
        axis = figure.add_subplot(1, count, panel + 1)
        rows = frame[frame["truth"] >= 0]
        labels = list(range(len(class_names)))
        predicted = frame_logits(rows)[:, :N_CLASSES].argmax(1) if len(rows) else np.array([], dtype=int)
        matrix = confusion_matrix(rows["truth"].to_numpy(), predicted, labels=labels)
        shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        axis.set_xticks(labels, class_names, rotation=90, fontsize=7)
        axis.set_yticks(labels, class_names, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("truth")
        title = "single-label images" if kind == "multilabel" else "crops"
        axis.set_title(f"{name} ({title}, n={len(rows)}, row-normalised)", fontsize=9)
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                axis.text(j, i, str(value), ha="center", va="center", fontsize=5,
                          color="white" if shares[i, j] > 0.5 else "black")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
