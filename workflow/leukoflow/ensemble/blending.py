"""How the classifiers are blended (docs/method.md §9.1) and the fixed schemes the search starts from.

The MC models are combined by a weighted mean of their first 23 logits (the Background logit is
dropped), followed by a softmax; the ML models by a plain mean of their logits, followed by a
sigmoid. On an image with exactly one cell the class is
argmax(alpha * softmax(MC) + (1 - alpha) * sigmoid(ML)); on an image with several cells it is
argmax(MC): the ML model is never used there. Optional per-class offsets are added to the log of
that probability before the argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from leukoflow.ensemble.inputs import EnsembleInputs

# "Equal weights" is the plain mean of the two probability vectors: a definition, not a tunable.
EQUAL_ALPHA = 0.5
TINY = 1e-12


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


def blended_probability(inputs: EnsembleInputs, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """Per crop the blended class probabilities [n, 23] and whether the ML model took part."""
    weights = np.array([scheme.weights.get(name, 0.0) for name in inputs.mc_names])
    probability = softmax(np.tensordot(weights, inputs.mc_logits, axes=1))
    use_ml = inputs.single_cell & inputs.has_ml & (scheme.alpha < 1.0)
    if use_ml.any():
        probability[use_ml] = (scheme.alpha * probability[use_ml]
                               + (1.0 - scheme.alpha) * sigmoid(inputs.ml_logits[use_ml]))
    return probability, use_ml


def decide(probability: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """argmax of the probabilities, or of log-probability + per-class offsets."""
    if offsets is None:
        return probability.argmax(axis=1)
    return (np.log(np.maximum(probability, TINY)) + offsets).argmax(axis=1)


def blend(inputs: EnsembleInputs, scheme: Scheme, offsets: np.ndarray | None = None) -> Blended:
    """Classes of every crop under a scheme (module docstring)."""
    probability, use_ml = blended_probability(inputs, scheme)
    class_idx = decide(probability, offsets)
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


