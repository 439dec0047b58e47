"""Background images: single-cell smears with the white cell painted out (docs/method.md §6, §7.1).

The winner's `remove_wbc`, seeded: take the top detector-1 box of a confidently detected
single-cell image, grow it by `expand` px, Otsu-threshold the grey image (cells are darker than
the threshold), estimate the background colour as the per-channel mean of the bright (> 
`background_threshold`) pixels outside a dilated cell mask, fill the largest dark contour inside
the grown box, dilate it, and paint it with that colour plus sparse integer noise. The images
train detector 2 as empty images and give the classifiers a background class.

Deviations: the grown box is clipped to the image (the original slice broke on a negative
start); the noise comes from `numpy.random.default_rng((seed, index))`, not the global state;
Otsu comes from OpenCV (skimage is not a dependency; both maximise the between-class variance).
Test images are sources only with `allow_test_sources`, since using them leaks test data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedKFold

from leukoflow import boxes as boxes_lib
from leukoflow import tables


def select_sources(fitted: pd.DataFrame, folds: pd.DataFrame, *, count: int, min_score: float,
                   test_boxes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Single-cell images whose one detector-1 box is confident, best first, at most `count`.

    Args:
        fitted: OOF_BOXES of detector 1 (train sources; one box for a single-cell image).
        folds: FOLDS (the cell count and the fold of each train image).
        test_boxes: TEST_BOXES, or None to use train images only.

    Returns:
        name, split, fold (-1 for test), x1..y2, score; sorted by score descending, then name.
    """
    single = set(folds.loc[folds["n_boxes"] == 1, "name"])
    train = fitted[fitted["name"].isin(single) & ~fitted["padded"]].merge(folds[["name"]], on="name")
    train = train.assign(split="train")[["name", "split", "fold", "x1", "y1", "x2", "y2", "score"]]
    pools = [train]
    if test_boxes is not None:
        counts = test_boxes.groupby("name")["row"].transform("size")
        test = test_boxes[(counts == 1) & (test_boxes["source"] == "detected")]
        pools.append(test.assign(split="test", fold=-1)[train.columns])
    pool = pd.concat(pools, ignore_index=True)
    pool = pool[pool["score"] >= min_score].sort_values(["score", "name"], ascending=[False, True], kind="stable")
    return pool.head(count).reset_index(drop=True)


def remove_cell(rgb: np.ndarray, box_xyxy: np.ndarray, rng: np.random.Generator, *, expand: int,
                fill_dilation: int, cell_dilation: int, background_threshold: int, noise_fraction: float,
                noise_amplitude: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint the white cell inside `box_xyxy` out of an RGB uint8 image.

    Returns:
        (new image, same shape and dtype; painted mask, bool HxW). The mask is empty when the
        grown box holds no dark pixel (nothing to remove).
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    _, dark = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    fill = _background_colour(rgb, dark, fill_dilation, background_threshold)
    mask = _cell_mask(dark, box_xyxy, expand, cell_dilation)
    out = rgb.copy()
    ys, xs = np.nonzero(mask)
    colour = np.tile(fill, (len(ys), 1)).astype(np.int64)
    noisy = rng.random(len(ys)) < noise_fraction
    colour[noisy] += rng.integers(-noise_amplitude, noise_amplitude + 1, size=(int(noisy.sum()), 3))
    out[ys, xs] = np.clip(colour, 0, 255).astype(np.uint8)
    return out, mask


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _background_colour(rgb: np.ndarray, dark: np.ndarray, dilation: int, threshold: int) -> np.ndarray:
    """Per-channel mean of the bright pixels away from every cell (median of the rest when none)."""
    outside = cv2.dilate(dark, _ellipse(dilation)) == 0
    colour = []
    for channel in range(3):
        values = rgb[..., channel][outside] if outside.any() else rgb[..., channel].ravel()
        bright = values[values > threshold]
        colour.append(bright.mean() if len(bright) else np.median(values))
    return np.round(np.array(colour)).astype(np.int64)


def _cell_mask(dark: np.ndarray, box_xyxy: np.ndarray, expand: int, dilation: int) -> np.ndarray:
    """Largest dark contour inside the grown box, filled and dilated, as a full-image bool mask."""
    height, width = dark.shape
    x1, y1, x2, y2 = boxes_lib.expand_and_clip(box_xyxy, expand, width, height)[0].astype(int)
    window = np.ascontiguousarray(dark[y1:y2, x1:x2])
    contours, _ = cv2.findContours(window, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros_like(dark)
    if not contours:
        return mask.astype(bool)
    largest = max(contours, key=cv2.contourArea)
    local = np.zeros_like(window)
    cv2.drawContours(local, [largest], -1, 255, thickness=cv2.FILLED)
    mask[y1:y2, x1:x2] = local
    return cv2.dilate(mask, _ellipse(dilation)) > 0


def assign_test_folds(sources: pd.DataFrame, stats: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Folds of test-made backgrounds: StratifiedKFold on mean-bin x std-bin (docs/method.md §7.1, §12.22).

    Strata smaller than n_folds are pooled; when even the pool is too small for a stratified split
    (tiny sets), the folds go round-robin over a seeded permutation.
    """
    test = (sources["split"] == "test").to_numpy()
    folds = sources["fold"].copy()
    index = np.flatnonzero(test)
    if len(index) == 0:
        return folds
    strata = (pd.cut(stats["mean"].iloc[index], 5, labels=False).astype(str) + "_"
              + pd.cut(stats["std"].iloc[index], 4, labels=False).astype(str)).to_numpy()
    sizes = pd.Series(strata).map(pd.Series(strata).value_counts()).to_numpy()
    strata = np.where(sizes < n_folds, "pooled", strata)
    if pd.Series(strata).value_counts().max() < n_folds:
        folds.iloc[index] = np.random.default_rng(seed).permutation(len(index)) % n_folds
        return folds
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(index)), strata)):
        folds.iloc[index[held_out]] = fold
    return folds


def paint_backgrounds(sources: pd.DataFrame, images: pd.DataFrame, out_dir: str | Path, *, seed: int,
                      n_folds: int, jpeg_quality: int, **remove_args: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write one background JPEG per source into out_dir; return the BACKGROUNDS table and a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path_of = images.set_index("name")["path"]
    records, stats, skipped = [], [], 0
    for index, source in enumerate(sources.itertuples(index=False)):
        with Image.open(path_of[source.name]) as handle:
            rgb = np.asarray(handle.convert("RGB"))
        painted, mask = remove_cell(rgb, np.array([source.x1, source.y1, source.x2, source.y2]),
                                    np.random.default_rng((seed, index)), **remove_args)
        if not mask.any():
            skipped += 1
            continue
        name = f"{Path(source.name).stem}_background.jpg"
        Image.fromarray(painted).save(out_dir / name, quality=jpeg_quality)
        records.append({"name": name, "path": str(out_dir / name), "source_name": source.name,
                        "source_split": source.split, "fold": int(source.fold), "width": rgb.shape[1],
                        "height": rgb.shape[0], "score": float(source.score),
                        "masked_fraction": float(mask.mean())})
        stats.append({"mean": float(painted.mean()), "std": float(painted.std())})
    table = pd.DataFrame.from_records(records, columns=tables.BACKGROUNDS.column_names)
    stats_frame = pd.DataFrame.from_records(stats, columns=["mean", "std"])
    table["fold"] = assign_test_folds(table.rename(columns={"source_split": "split"}), stats_frame, n_folds, seed)
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    table = table.astype({c.name: kinds[c.dtype] for c in tables.BACKGROUNDS.columns})
    summary = {"n_backgrounds": int(len(table)), "background_sources_without_cell": skipped,
               "backgrounds_from_test": int((table["source_split"] == "test").sum()),
               "background_masked_fraction_mean": float(table["masked_fraction"].mean()) if len(table) else None}
    return table, summary


def write_gallery(backgrounds: pd.DataFrame, images: pd.DataFrame, target: str | Path, *, max_pairs: int,
                  tile: int) -> None:
    """Source | background thumbnails side by side, one pair per row block."""
    path_of = images.set_index("name")["path"]
    chosen = backgrounds.head(max_pairs)
    sheet = Image.new("RGB", (2 * tile, tile * max(1, len(chosen))), "white")
    for index, row in enumerate(chosen.itertuples(index=False)):
        for column, path in enumerate((path_of[row.source_name], row.path)):
            with Image.open(path) as handle:
                thumb = handle.convert("RGB")
            thumb.thumbnail((tile, tile))
            sheet.paste(thumb, (column * tile, index * tile))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target)


def make_backgrounds(*, oof: str, images: str, folds: str, test_boxes: list[str], table: str, background_images: str,
                     gallery: str, settings: dict[str, Any], n_folds: int, seed: int) -> dict[str, Any]:
    """Rule entry: pick sources from detector-1 boxes, paint the backgrounds, write table and gallery.

    `settings` is the config `backgrounds` block: count, min_score, allow_test_sources, jpeg_quality,
    gallery_pairs, tile_px and the `remove_cell` parameters.
    """
    settings = dict(settings)
    image_table = tables.read_table(images, tables.CURATED_IMAGES)
    test = tables.read_table(test_boxes[0], tables.TEST_BOXES) if settings.pop("allow_test_sources") else None
    sources = select_sources(tables.read_table(oof, tables.OOF_BOXES), tables.read_table(folds, tables.FOLDS),
                             count=settings.pop("count"), min_score=settings.pop("min_score"), test_boxes=test)
    pairs, tile = settings.pop("gallery_pairs"), settings.pop("tile_px")
    painted, summary = paint_backgrounds(sources, image_table, background_images, seed=seed, n_folds=n_folds, **settings)
    tables.write_table(painted, table, tables.BACKGROUNDS)
    write_gallery(painted, image_table, gallery, max_pairs=pairs, tile=tile)
    return {**summary, "background_candidates": int(len(sources))}
