"""Detector datasets: one ultralytics dataset per fold, symlinks to the curated images plus
single-class label files (69k images are never copied); detector 2's variant leaves out the
images the noisy-box search condemned and adds the background images.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables

CLASS_NAME = "WBC"  # one class: the detector finds white cells, the classifiers name them
SPLITS = ("train", "val")


def yolo_label_lines(boxes_xyxy: np.ndarray, width: int, height: int) -> list[str]:
    """Single-class YOLO label lines `0 cx cy w h` (normalised) for xyxy pixel boxes."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / width
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / height
    box_w = (boxes[:, 2] - boxes[:, 0]) / width
    box_h = (boxes[:, 3] - boxes[:, 1]) / height
    return [f"0 {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for x, y, w, h in zip(centre_x, centre_y, box_w, box_h)]


def fold_membership(folds: pd.DataFrame, fold: int, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """name -> split ('train' | 'val') for one fold; excluded images leave both splits (docs/method.md §5)."""
    kept = folds[~folds["name"].isin(set(exclude))]
    split = np.where(kept["fold"].to_numpy() == fold, "val", "train")
    return pd.DataFrame({"name": kept["name"].to_numpy(), "split": split})


def write_yolo_dataset(*, images: pd.DataFrame, boxes: pd.DataFrame, folds: pd.DataFrame, fold: int,
                       out_dir: str | Path, exclude: Iterable[str] = (),
                       backgrounds: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write the ultralytics dataset of one fold: `{train,val}/images` links, labels, `dataset.yaml`.

    Args:
        images: CURATED_IMAGES (path, width, height per name).
        boxes: CURATED_BOXES; every box of a member image becomes a label line.
        folds: FOLDS; the `fold` images are validation, the others training.
        exclude: image names left out of both splits (detector 2's noisy images).
        backgrounds: BACKGROUNDS rows (name, path, fold) added as images without labels.

    Returns:
        Summary: images, boxes and backgrounds per split.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    members = fold_membership(folds, fold, exclude).merge(
        images[["name", "path", "width", "height"]], on="name", how="left", validate="one_to_one")
    _require_known_images(members, "folds")
    if backgrounds is not None and len(backgrounds):
        extra = backgrounds.assign(split=np.where(backgrounds["fold"].to_numpy() == fold, "val", "train"))
        members = pd.concat([members, extra[["name", "split", "path", "width", "height"]]], ignore_index=True)
    if not (members["split"] == "train").any():
        raise ValueError(f"fold {fold}: no training image left after excluding {len(set(exclude))} image(s)")
    boxes_by_name = {name: group[["x1", "y1", "x2", "y2"]].to_numpy() for name, group in boxes.groupby("name")}
    summary: dict[str, Any] = {"fold": int(fold), "excluded_images": len(set(exclude))}
    for split in SPLITS:
        rows = members[members["split"] == split]
        counts = _write_split(rows, boxes_by_name, out_dir / split)
        summary.update({f"{split}_{key}": value for key, value in counts.items()})
    _write_dataset_yaml(out_dir)
    return summary


def _require_known_images(members: pd.DataFrame, source: str) -> None:
    unknown = members.loc[members["path"].isna(), "name"]
    if len(unknown):
        raise ValueError(f"{source}: {len(unknown)} image(s) missing from the curated image table, "
                         f"e.g. {unknown.iloc[0]!r}")


def _write_split(rows: pd.DataFrame, boxes_by_name: Mapping[str, np.ndarray], split_dir: Path) -> dict[str, int]:
    image_dir, label_dir = split_dir / "images", split_dir / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    n_boxes = n_empty = 0
    for name, path, width, height in rows[["name", "path", "width", "height"]].itertuples(index=False):
        (image_dir / name).symlink_to(Path(path).resolve())
        lines = yolo_label_lines(boxes_by_name.get(name, np.zeros((0, 4))), int(width), int(height))
        (label_dir / Path(name).with_suffix(".txt").name).write_text("".join(line + "\n" for line in lines))
        n_boxes += len(lines)
        n_empty += not lines
    return {"images": len(rows), "boxes": n_boxes, "empty_images": n_empty}


def _write_dataset_yaml(out_dir: Path) -> None:
    text = (f"path: {out_dir.resolve()}\ntrain: train/images\nval: val/images\n"
            f"names:\n  0: {CLASS_NAME}\n")
    (out_dir / "dataset.yaml").write_text(text)


def export_yolo(*, images: str, boxes: str, folds: str, n_folds: int, datasets: str, noisy: list[str],
                backgrounds: list[str]) -> dict[str, Any]:
    """Rule entry: every fold's dataset under `datasets/fold{k}`; with `noisy`/`backgrounds` (detector 2:
    reviewed boxes and flags) the cleaned variant."""
    from leukoflow.detection.noisy import excluded_images

    exclude = excluded_images(tables.read_table(noisy[0], tables.NOISY_FLAGS)) if noisy else []
    inputs = {"images": tables.read_table(images, tables.CURATED_IMAGES),
              "boxes": tables.read_table(boxes, tables.CURATED_BOXES),
              "folds": tables.read_table(folds, tables.FOLDS), "exclude": exclude,
              "backgrounds": tables.read_table(backgrounds[0], tables.BACKGROUNDS) if backgrounds else None}
    per_fold = {str(fold): write_yolo_dataset(fold=fold, out_dir=Path(datasets) / f"fold{fold}", **inputs)
                for fold in range(n_folds)}
    return {"excluded_images": len(exclude), "folds": per_fold}
