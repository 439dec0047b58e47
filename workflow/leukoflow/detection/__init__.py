"""Detection stage: fold-wise detectors, OOF boxes, noisy-box and label audits, review, crops.

Each rule of workflow/rules/detection.smk is the entry of the same name below.
"""

from leukoflow.detection.backgrounds import make_backgrounds
from leukoflow.detection.crops import make_crops
from leukoflow.detection.datasets import export_yolo
from leukoflow.detection.fitting import fit_oof
from leukoflow.detection.label_noise import clean_labels
from leukoflow.detection.noisy import flag_noisy_boxes
from leukoflow.detection.review import apply_review
from leukoflow.detection.summary import summarize_detection
from leukoflow.detection.yolo import predict_oof, predict_test_boxes, train_detector

__all__ = ["apply_review", "clean_labels", "export_yolo", "fit_oof", "flag_noisy_boxes", "make_backgrounds",
           "make_crops", "predict_oof", "predict_test_boxes", "summarize_detection", "train_detector"]
