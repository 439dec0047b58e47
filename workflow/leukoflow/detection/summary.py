"""The detection stage's headline figures in one JSON (read by acceptance checks and tracking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leukoflow.engine.runtime import read_json, tracked


@tracked
def summarize_detection(*, detectors: list[str], exports: list[str], predictions: list[str], noisy: str,
                        labels: str, review: str, backgrounds: str, test: str, crops: str, detector_names: list[str],
                        test_detector: str) -> dict[str, Any]:
    """Rule entry: the stage's headline figures in one JSON (read by acceptance checks and tracking)."""
    per_detector = {name: read_json(path) for name, path in zip(detector_names, detectors)}
    for summary in per_detector.values():
        for fold in summary["per_fold"].values():
            fold.pop("history", None)
        summary.pop("giou_histogram", None)
    head = per_detector[test_detector]
    noisy_summary, background_summary = read_json(noisy), read_json(backgrounds)
    test_summary, crop_summary, label_summary = read_json(test), read_json(crops), read_json(labels)
    return {
        "oof_mean_rescaled_giou": head["oof_mean_rescaled_giou"],
        "full_image_baseline_giou": head["full_image_baseline_giou"],
        "baseline_mean_rescaled_giou": head["full_image_baseline_giou"],
        "oof_gain_over_baseline": head["oof_gain_over_baseline"],
        "detectors": per_detector,
        **{key: value for key, value in noisy_summary.items() if key.startswith("noisy")},
        "n_backgrounds": background_summary["n_backgrounds"],
        **{key: value for key, value in label_summary.items() if key.startswith("label")},
        "review_overrides": read_json(review)["review_overrides"],
        "n_crops": crop_summary["n_crops"],
        "crops_below_giou_floor": crop_summary["crops_below_giou_floor"],
        "crops_dropped_noisy_boxes": crop_summary["crops_dropped_noisy_boxes"],
        "test_boxes": test_summary["test_boxes"],
        "test_rows": test_summary["test_rows"],
        "timings_seconds": _stage_timings(exports + predictions + [noisy, labels, review, backgrounds, test, crops]),
        "train_seconds": {name: {k: f["train_seconds"] for k, f in s["per_fold"].items()}
                          for name, s in per_detector.items()},
        "test_ms_per_image_per_model": test_summary["ms_per_image_per_model"],
    }


def _stage_timings(summaries: list[str]) -> dict[str, float]:
    """Seconds per job, keyed by its summary path below results/ (e.g. 'detection/det1/fold0/oof_summary')."""
    return {str(Path(path).with_suffix("")).split("results/", 1)[-1]: read_json(path).get("seconds")
            for path in summaries}
