"""The run's headline figures: results/metrics.json, read by DVC (`dvc metrics`) and releases."""

from __future__ import annotations

from typing import Any

HEADLINE_KEYS = {
    "ingest": ("rows_in", "rows_kept", "rows_repaired", "rows_quarantined", "images_in", "images_quarantined"),
    "curation": (
        "images_in", "images_kept", "duplicate_groups", "boxes_clipped", "boxes_quarantined",
        "fold_max_class_deviation", "dedup_recall", "dedup_precision",
    ),
    "detection": ("oof_mean_rescaled_giou", "full_image_baseline_giou", "noisy_precision", "noisy_recall", "test_boxes"),
    "classification": ("best_oof_macro_f1", "oof_macro_f1"),
    "ensemble": ("objective", "best_oof", "equal_weights_oof", "winner_scheme_oof", "best_single_model_oof",
                 "nested_estimate"),
    "submission": ("rows", "rows_fallback_class", "score", "mean_rescaled_giou", "macro_f1"),
}


SCORE_KEYS = ("score", "mean_rescaled_giou", "macro_f1")


def headline_metrics(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pick the headline keys of each stage summary, nested by stage; absent keys are skipped.

    The submission's official score (when test truth exists) is also repeated at the top level.
    """
    metrics: dict[str, Any] = {
        stage: {key: summaries[stage][key] for key in keys if key in summaries[stage]}
        for stage, keys in HEADLINE_KEYS.items()
        if stage in summaries
    }
    submission = summaries.get("submission", {})
    metrics.update({key: submission[key] for key in SCORE_KEYS if key in submission})
    return metrics
