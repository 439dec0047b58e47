"""Detection stage: fold-wise detectors, OOF boxes, noisy-box and label audits, review, crops.

Each rule of workflow/rules/detection.smk is the entry of the same name below, imported on first
use (`leukoflow.engine.lazy`): only the training and prediction entries load torch and ultralytics.
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {
    "apply_review": "review",
    "clean_labels": "label_noise",
    "export_yolo": "datasets",
    "fit_oof": "fitting",
    "flag_noisy_boxes": "noisy",
    "make_backgrounds": "backgrounds",
    "make_crops": "crops",
    "predict_oof": "yolo",
    "predict_test_boxes": "yolo",
    "summarize_detection": "summary",
    "train_detector": "yolo",
}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
