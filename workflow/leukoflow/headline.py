"""The run's headline figures: results/metrics.json, read by DVC (`dvc metrics`) and releases."""

from __future__ import annotations

from typing import Any

HEADLINE_KEYS = {
    "ingest": ("rows_in", "rows_kept", "rows_repaired", "rows_quarantined", "images_in", "images_quarantined"),
    "curation": (
        "images_in", "images_kept", "duplicate_groups", "boxes_clipped", "boxes_quarantined",
        "fold_max_class_deviation", "dedup_recall", "dedup_precision",
    ),
    "ensemble": ("objective", "best_oof", "equal_weights", "winner_scheme", "best_single", "nested_estimate"),
    "submission": ("rows", "rows_fallback_class", "score", "mean_rescaled_giou", "macro_f1"),
}


def headline_metrics(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pick the headline keys of each stage summary, nested by stage; absent keys are skipped."""
    return {
        stage: {key: summaries[stage][key] for key in keys if key in summaries[stage]}
        for stage, keys in HEADLINE_KEYS.items()
        if stage in summaries
    }
