"""Rule entries that prepare the classifiers' inputs: ground-truth crops and the pixel caches.

Kept apart from the training entries (`stage`) so that these jobs import neither torch nor timm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from leukoflow import tables
from leukoflow.classification import crop_cache
from leukoflow.classification.items import crops_from_ground_truth

Path_ = str | Path
Optional = Path_ | list


def optional_path(value: Optional) -> str | None:
    """A path, or None for an input the rule left empty."""
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise ValueError(f"expected at most one file, got {value}")
        return str(value[0]) if value else None
    return str(value)


def ground_truth_crops(*, boxes: Path_, folds: Path_, images: Path_, crops: Path_, margin: float) -> dict[str, Any]:
    """CROPS rows cut from the curated ground-truth boxes (the development crop source)."""
    table = crops_from_ground_truth(tables.read_table(boxes, tables.CURATED_BOXES),
                                    tables.read_table(folds, tables.FOLDS),
                                    tables.read_table(images, tables.CURATED_IMAGES), margin=margin)
    tables.write_table(table, crops, tables.CROPS)
    return {"crops": len(table), "source": "ground_truth", "margin": margin}


# Columns a pixel cache never reads (text and numbers per row that only widen its peak memory)
_IMAGES_NOT_READ = ("width", "height", "pixel_mean", "pixel_std", "group_id", "role", "train_test_duplicate")
_CROPS_NOT_READ = ("score", "label", "class_idx", "trustii_id", "source")


def cache_classifier_inputs(*, images: Path_, crops: Optional, folds: Optional, backgrounds: Optional,
                            pixels: Path_, index: Path_, source: str, size: int, seed: int, cache_format: str,
                            background: dict[str, Any], threads: int) -> dict[str, Any]:
    """One pixel cache (`crop_cache`) of a source at a size, its tiles encoded in `cache_format`."""
    def optional(path: Optional, schema: tables.Schema, skip: tuple[str, ...] = ()) -> pd.DataFrame | None:
        return tables.read_table(optional_path(path), schema, skip=skip) if optional_path(path) else None

    return crop_cache.build_cache(
        source, int(size), pixels, index, images=tables.read_table(images, tables.CURATED_IMAGES, skip=_IMAGES_NOT_READ),
        crops=optional(crops, tables.CROPS, _CROPS_NOT_READ), folds=optional(folds, tables.FOLDS),
        backgrounds=optional(backgrounds, tables.BACKGROUNDS), seed=seed, threads=threads,
        background_crops_per_image=background["per_image"], background_min_side=background["min_side"],
        background_max_side=background["max_side"], background_valid_side=background["valid_side"],
        background_valid_position=tuple(background["valid_position"]), fmt=cache_format)
