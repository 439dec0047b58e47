"""Ensemble stage: blend the classifiers on out-of-fold data, then build the submission."""

from .submission import build_submission
from .weight_search import search_ensemble_weights

__all__ = ["build_submission", "search_ensemble_weights"]
