"""Which items a classifier sees: truth tables, cached pixels, fold splits (docs/method.md §8.1).

An item is one row of a pixel cache (`crop_cache`): a crop (multiclass) or a whole image
(multilabel), or a background crop/image (the Background class). `ItemSet` keeps, per item, its
cache array and row, its dense target and the ids the logits tables carry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.classification import crop_cache
from leukoflow.classification.spec import ClassifierSpec
from leukoflow.constants import CLASSES

LOGGER = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- input tables

def crops_from_ground_truth(boxes: pd.DataFrame, folds: pd.DataFrame, images: pd.DataFrame, *,
                            margin: float) -> pd.DataFrame:
    """Development/testing fallback: CROPS rows cut from the ground-truth boxes, not detector 2.

    The winner trained on detector-2 out-of-fold boxes matched to the ground truth (§7.2); this
    fallback lets the classifiers run before (or without) detection. Each box is expanded by
    `margin` px per side and clipped to the image; k in `crop_id` is the box's rank on its image
    in train.csv row order. Every box's image must have a fold.
    """
    sizes = images.set_index("name")[["width", "height"]]
    fold_of = folds.set_index("name")["fold"]
    missing = sorted(set(boxes["name"]) - set(fold_of.index))
    if missing:
        raise ValueError(f"ground-truth crops: {len(missing)} boxed image(s) have no fold, e.g. {missing[:3]}")
    frame = boxes.sort_values("row", kind="stable").reset_index(drop=True)
    width = sizes.loc[frame["name"], "width"].to_numpy(float)
    height = sizes.loc[frame["name"], "height"].to_numpy(float)
    rank = frame.groupby("name").cumcount().to_numpy()
    return pd.DataFrame({
        "crop_id": frame["name"].astype(str) + "#" + pd.Series(rank).astype(str),
        "name": frame["name"].astype(str),
        "split": "train",
        "fold": fold_of.loc[frame["name"]].to_numpy().astype("int64"),
        "x1": np.clip(frame["x1"].to_numpy(float) - margin, 0, width),
        "y1": np.clip(frame["y1"].to_numpy(float) - margin, 0, height),
        "x2": np.clip(frame["x2"].to_numpy(float) + margin, 0, width),
        "y2": np.clip(frame["y2"].to_numpy(float) + margin, 0, height),
        "score": 1.0,
        "label": frame["label"].astype(str),
        "class_idx": frame["class_idx"].astype("int64"),
        "trustii_id": np.full(len(frame), -1, dtype="int64"),
        "source": "ground_truth",
    })


def image_labels(boxes: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per training image of FOLDS: fold and the '|'-joined sorted class indices of its boxes."""
    known = boxes[boxes["class_idx"] >= 0]
    labels = known.groupby("name")["class_idx"].agg(lambda v: "|".join(str(i) for i in sorted(set(v))))
    frame = folds[["name", "fold"]].copy()
    frame["labels"] = frame["name"].map(labels).fillna("").astype(str)
    return frame.reset_index(drop=True)


def labels_to_multi_hot(labels: Sequence[str], n_outputs: int) -> np.ndarray:
    hot = np.zeros((len(labels), n_outputs), dtype=np.float32)
    for row, text in enumerate(labels):
        for index in filter(None, str(text).split("|")):
            hot[row, int(index)] = 1.0
    return hot


# ----------------------------------------------------------------------------- fold data

@dataclass
class ItemSet:
    """Items of one role: which cache array and row, dense targets, ids for the logits tables."""

    source: np.ndarray  # int, index into FoldData.arrays
    row: np.ndarray  # int, row in that array
    target: np.ndarray  # float32 [n, K] (one-hot for multiclass)
    ids: np.ndarray  # str
    names: np.ndarray  # str
    folds: np.ndarray  # int
    trustii: np.ndarray  # int
    real: np.ndarray  # bool: a crop/image of the dataset (False: a background item)
    role: np.ndarray  # str: train | valid | test (cache index role)

    def __len__(self) -> int:
        return len(self.row)

    def subset(self, mask: np.ndarray) -> ItemSet:
        return ItemSet(*(getattr(self, f.name)[mask] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[ItemSet]) -> ItemSet:
        return ItemSet(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ItemSet)))


def main_items(spec: ClassifierSpec, index: pd.DataFrame, truth: pd.DataFrame) -> tuple[ItemSet, dict[str, int]]:
    """Items of the main cache (crops or whole images) with their targets.

    `truth`: for crops, the CROPS table; for images, `image_labels` (name, fold, labels).
    Training crops without a class (`class_idx` -1: detector boxes without a ground-truth match)
    are left out of training and OOF, and counted in the returned skip counts.
    """
    if spec.kind == "multiclass":
        table = truth.set_index("crop_id").loc[index["id"]]
        class_idx = table["class_idx"].to_numpy()
        labels = np.where(class_idx >= 0, class_idx.astype(str), "")
        trustii = table["trustii_id"].to_numpy().astype("int64")
    else:
        labels = truth.set_index("name")["labels"].reindex(index["id"]).fillna("").to_numpy()
        trustii = np.full(len(index), -1, dtype="int64")
    items = ItemSet(
        source=np.zeros(len(index), dtype="int64"), row=np.arange(len(index)),
        target=labels_to_multi_hot(labels, spec.n_outputs), ids=index["id"].to_numpy(str),
        names=index["name"].to_numpy(str), folds=index["fold"].to_numpy("int64"), trustii=trustii,
        real=np.ones(len(index), dtype=bool), role=index["role"].to_numpy(str),
    )
    is_test = index["role"].to_numpy() == "test"
    unlabelled = (~is_test) & (items.target.sum(1) == 0) & (spec.kind == "multiclass")
    if unlabelled.any():
        LOGGER.warning("%s: %d training crop(s) without a class are not used", spec.name, int(unlabelled.sum()))
    items = items.subset(~unlabelled)
    return items, {"unlabelled_crops_skipped": int(unlabelled.sum())}


def background_items(spec: ClassifierSpec, index: pd.DataFrame, source: int) -> ItemSet:
    """Background cache rows, target = the Background class (index 23)."""
    target = np.zeros((len(index), spec.n_outputs), dtype=np.float32)
    target[:, len(CLASSES)] = 1.0
    return ItemSet(
        source=np.full(len(index), source, dtype="int64"), row=np.arange(len(index)), target=target,
        ids=index["id"].to_numpy(str), names=index["name"].to_numpy(str),
        folds=index["fold"].to_numpy("int64"), trustii=np.full(len(index), -1, dtype="int64"),
        real=np.zeros(len(index), dtype=bool), role=index["role"].to_numpy(str),
    )


def split_fold(main: ItemSet, fold: int, background: ItemSet | None = None) -> tuple[ItemSet, ItemSet]:
    """Training items (other folds) and validation items (this fold) of one fold.

    Background crops: the `train` crops of other folds train, the `valid` crop of this fold
    validates. Whole background images (role `train` only): other folds train, this fold validates.
    """
    labelled = main.role != "test"
    train = [main.subset(labelled & (main.folds != fold))]
    valid = [main.subset(labelled & (main.folds == fold))]
    if background is not None and len(background):
        valid_role = "valid" if (background.role == "valid").any() else "train"
        train.append(background.subset((background.role == "train") & (background.folds != fold)))
        valid.append(background.subset((background.role == valid_role) & (background.folds == fold)))
    return ItemSet.concat(train), ItemSet.concat(valid)


def gather_pixels(arrays: Sequence[np.ndarray], source: np.ndarray, row: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] of the given items, read from the cache readers (`PixelCache`) or arrays."""
    size = arrays[0].shape[1]
    out = np.empty((len(row), size, size, 3), dtype=np.uint8)
    for which in np.unique(source):
        mask = source == which
        rows = row[mask]
        order = np.argsort(rows, kind="stable")  # sequential reads from the shard
        picked = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        picked[order] = arrays[which][rows[order]]
        out[mask] = picked
    return out



def truth_for(spec: ClassifierSpec, *, crops: pd.DataFrame | None = None, boxes: pd.DataFrame | None = None,
              folds: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table `main_items` needs: the crop table (multiclass) or `image_labels` (multilabel)."""
    if spec.kind == "multiclass":
        if crops is None:
            raise ValueError(f"classifier {spec.name!r}: a multiclass model needs the crop table")
        return crops
    if boxes is None or folds is None:
        raise ValueError(f"classifier {spec.name!r}: a multilabel model needs the curated boxes and folds")
    return image_labels(boxes, folds)


def truth_from_paths(spec: ClassifierSpec, *, crops: str | None = None, boxes: str | None = None,
                     folds: str | None = None) -> pd.DataFrame:
    """`truth_for` on the crop/box/fold table files a rule declares (None: not declared)."""
    def optional(path: str | None, schema: tables.Schema) -> pd.DataFrame | None:
        return tables.read_table(path, schema) if path else None

    return truth_for(spec, crops=optional(crops, tables.CROPS), boxes=optional(boxes, tables.CURATED_BOXES),
                     folds=optional(folds, tables.FOLDS))


def truth_from_tables(spec: ClassifierSpec, inputs: Any) -> pd.DataFrame:
    """`truth_from_paths` on a Snakemake named input list (absent names are None)."""
    names = set(inputs.keys())
    return truth_from_paths(spec, **{key: str(inputs[key]) for key in ("crops", "boxes", "folds") if key in names})


def load_items(spec: ClassifierSpec, main_cache: tuple[str | Path, str | Path], truth: pd.DataFrame,
               background_cache: tuple[str | Path, str | Path] | None = None, *, with_background: bool = True,
               decoders: int = 1) -> tuple[list[crop_cache.PixelCache], ItemSet, ItemSet | None, dict[str, int]]:
    """Cache readers, main items, background items (when the spec uses them) and skip counts;
    `decoders` threads decode each batch."""
    pixels, index = crop_cache.read_cache(*main_cache, decoders=decoders)
    if pixels.shape[1] != spec.img_size:
        raise ValueError(f"classifier {spec.name!r}: cache {main_cache[0]} holds {pixels.shape[1]} px images, "
                         f"the model wants {spec.img_size}")
    main, skipped = main_items(spec, index, truth)
    arrays = [pixels]
    background = None
    if spec.background and with_background:
        if background_cache is None:
            raise ValueError(f"classifier {spec.name!r} uses the background class but no background cache was given")
        bg_pixels, bg_index = crop_cache.read_cache(*background_cache, decoders=decoders)
        arrays.append(bg_pixels)
        background = background_items(spec, bg_index, source=1)
    return arrays, main, background, skipped
