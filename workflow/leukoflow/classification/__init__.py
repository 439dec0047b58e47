"""Classification stage: fold-wise timm classifiers on crops (multiclass) and whole images (multilabel)."""

from .stage import (cache_classifier_inputs, evaluate_classifiers, ground_truth_crops, predict_classifier,
                    train_classifier)
from .pseudo_labels import select_pseudo_labels, summarize_pseudo_labels
from .weights import fetch_weights

__all__ = ["cache_classifier_inputs", "evaluate_classifiers", "fetch_weights", "ground_truth_crops",
           "predict_classifier", "select_pseudo_labels", "summarize_pseudo_labels", "train_classifier"]
