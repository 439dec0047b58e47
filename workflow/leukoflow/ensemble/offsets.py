"""Per-class offsets on the blended log-probability, fitted on OOF after the weight search.

Macro F1 weighs every class equally, so a small bias towards a rare class can pay off. The
offsets are fitted by coordinate ascent over a grid in [-max_abs, max_abs] per class, starting at
0 and keeping a change only when it raises the objective, so the fitted offsets never score below
no offsets on the rows they were fitted on. Like the weights, they are optimistic on the OOF they
were fitted on; `nested_offsets` fits them on the other folds and scores each held-out fold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from leukoflow.ensemble.blending import decide


def fit_offsets(probability: np.ndarray, objective: Callable[[np.ndarray], float], *, max_abs: float, steps: int,
                passes: int) -> tuple[np.ndarray, float]:
    """Offsets [K] maximising objective(class_idx) and the value they reach."""
    offsets = np.zeros(probability.shape[1])
    best = objective(decide(probability, offsets))
    grid = np.linspace(-max_abs, max_abs, steps)
    for _ in range(passes):
        improved = False
        for k in range(len(offsets)):
            kept = offsets[k]
            for value in grid:
                offsets[k] = value
                score = objective(decide(probability, offsets))
                if score > best:
                    best, kept, improved = score, value, True
            offsets[k] = kept
        if not improved:
            break
    return offsets, best


def nested_offsets(probability: np.ndarray, folds: np.ndarray, objective: Callable[..., float], *,
                   max_abs: float, steps: int, passes: int) -> dict[str, Any]:
    """Held-out score of offsets fitted on the other folds (`objective(class_idx, rows)`)."""
    predicted = np.zeros(len(probability), dtype=np.int64)
    per_fold = {}
    for fold in sorted(np.unique(folds)):
        inner = folds != fold
        offsets, inner_best = fit_offsets(probability, lambda class_idx: objective(class_idx, inner),
                                          max_abs=max_abs, steps=steps, passes=passes)
        held_out = folds == fold
        predicted[held_out] = decide(probability, offsets)[held_out]
        per_fold[str(int(fold))] = {"inner_best": round(inner_best, 6),
                                    "held_out": round(objective(predicted, held_out), 6)}
    return {"score": objective(predicted), "per_fold": per_fold}
