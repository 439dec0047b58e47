"""Classification stage: fold-wise timm classifiers on crops (multiclass) and whole images (multilabel).

Entries are imported on first use (`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {
    "cache_classifier_inputs": "preparation",
    "evaluate_classifiers": "evaluation",
    "fetch_weights": "weights",
    "ground_truth_crops": "preparation",
    "predict_classifier": "evaluation",
    "select_pseudo_labels": "pseudo_labels",
    "summarize_pseudo_labels": "pseudo_labels",
    "train_classifier": "stage",
}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
