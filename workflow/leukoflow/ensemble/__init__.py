"""Ensemble stage: blend the classifiers on out-of-fold data, then build the submission.

Entries are imported on first use (`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {"build_submission": "submission", "search_ensemble_weights": "weight_search"}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
