"""Decode, cut and square-resize the classifier inputs once per input size (docs/method.md §8.1).

Every classifier reads its pixels from a cache built here, so a training epoch never decodes a
source image or resizes. A cache is two files:

* `<stem>.shard`: the `[N, size, size, 3]` RGB tiles, each encoded on its own (`pixel_shards`:
  lossless WebP by default, about 1/6 of the raw uint8 bytes at 384-512 px), decoded per batch
  by the trainers through `pixel_shards.PixelCache`;
* `<stem>.parquet`: the index, one row per tile in the same order, columns
  `id` (crop_id, image NAME or background item id), `name` (source image NAME),
  `fold` (validation fold, -1 for test), `role` (`train` | `valid` | `test`) and where the
  tile lies in the shard (`offset`, `length`, `crc32`).

Resizing follows the winner: the (crop or whole) image is squashed to a square, aspect not kept,
with Lanczos (`cv2.INTER_LANCZOS4` there, `PIL.Image.LANCZOS` here). Four sources are cached:

* `crops`: one row per crop-table row (the box is already the crop box, margin included);
* `images`: one row per kept curated image (the multi-label model sees whole images);
* `background_crops`: per background image, `n_train_crops` random square crops of side
  U[min_side, max_side] px (training) and one fixed `valid_side` crop at a relative position
  (validation), as the winner's ViT-L 1.2.5. The winner drew a fresh random crop every epoch; we
  draw a fixed set once (seeded), so the cache stays a plain array; the training augmentation
  adds the per-epoch variety;
* `background_images`: whole background images (multi-label background class).

Decoding, resizing and encoding run in a thread pool: Pillow releases the GIL while it works.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from leukoflow.classification.pixel_shards import SHARD_COLUMNS, PixelCache, encode_tile, write_shard

LOGGER = logging.getLogger(__name__)
_TASKS_PER_THREAD = 64  # tasks in flight per encoding thread: enough to keep them busy
ITEM_COLUMNS = ["id", "name", "fold", "role"]  # what each tile is; SHARD_COLUMNS: where it lies
INDEX_COLUMNS = [*ITEM_COLUMNS, *SHARD_COLUMNS]
SOURCES = ("crops", "images", "background_crops", "background_images")


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 `[size, size, 3]`: the image squashed to a square with Lanczos."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _open_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"crop cache: cannot decode image {path}: {error}") from error


def _crop_boxes(image: Image.Image, boxes: np.ndarray, size: int, where: str) -> list[np.ndarray]:
    """Cut every xyxy box (clipped to the image, at least 1 px) and squash-resize it."""
    width, height = image.size
    out = []
    for x1, y1, x2, y2 in boxes:
        if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
            raise ValueError(f"crop cache: {where}: box {(x1, y1, x2, y2)} is empty or not finite")
        left, top = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
        right = int(np.clip(np.ceil(x2), left + 1, width))
        bottom = int(np.clip(np.ceil(y2), top + 1, height))
        out.append(square_resize(image.crop((left, top, right, bottom)), size))
    return out


def _write_cache(payloads: Iterable[Any], render: Callable[[Any], list[np.ndarray]],
                 n_rows: int, size: int, pixels_path: Path, threads: int, fmt: str) -> pd.DataFrame:
    """Render each payload (one decoded image -> its rows) and encode its tiles in a thread pool;
    the shard keeps payload order. Returns the tiles' SHARD_COLUMNS."""
    def encoded(payload: Any) -> list[bytes]:
        return [encode_tile(tile, fmt) for tile in render(payload)]

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        blobs = (blob for group in _ordered_map(pool, encoded, payloads, window=_TASKS_PER_THREAD * max(1, threads))
                 for blob in group)
        return write_shard(pixels_path, blobs, fmt=fmt, size=size, rows=n_rows)


def _ordered_map(pool: ThreadPoolExecutor, function: Callable[[Any], Any], items: Iterable[Any], *,
                 window: int) -> Iterator[Any]:
    """`pool.map` with at most `window` tasks in flight, results in input order. `Executor.map`
    submits every task first: one future per image held to the end (about 1 KB per image)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _values_at(series: pd.Series, positions: np.ndarray, chunk: int = 4096) -> Iterator[Any]:
    """The series' values at `positions` as Python objects, made one chunk at a time as they are drawn."""
    for start in range(0, len(positions), chunk):
        yield from series.iloc[positions[start:start + chunk]].tolist()


def build_crop_cache(crops: pd.DataFrame, image_paths: Mapping[str, str] | pd.Series, size: int,
                     pixels_path: str | Path, *, threads: int, fmt: str) -> pd.DataFrame:
    """Cache every crop-table row (CROPS schema) at `size`; returns the index (crop-table order).

    `image_paths`: image NAME -> path (a dict, or a Series indexed by NAME)."""
    order = crops.assign(_row=np.arange(len(crops))).sort_values(["name", "_row"], kind="stable")
    order = order.reset_index(drop=True)
    paths = order["name"].map(image_paths)
    if paths.isna().any():
        missing = sorted(order.loc[paths.isna(), "name"].unique().tolist())
        raise ValueError(f"crop cache: {len(missing)} crop image(s) have no path in the image table, "
                         f"e.g. {missing[:3]}")
    starts = np.flatnonzero(order["name"].ne(order["name"].shift()).to_numpy(bool))
    stops = np.append(starts[1:], len(order))
    boxes = order[["x1", "y1", "x2", "y2"]].to_numpy(float)
    # Made as the encoders draw them: a list of every image's payload, or a dict of every image's
    # path, held 0.3 KB per image or more (BENCHMARKS.md, "Flat memory")
    payloads = ((path, boxes[start:stop], name) for start, stop, path, name
                in zip(starts, stops, _values_at(paths, starts), _values_at(order["name"], starts)))

    def render(payload: tuple[str, np.ndarray, str]) -> list[np.ndarray]:
        path, boxes, name = payload
        return _crop_boxes(_open_rgb(path), boxes, size, f"image {name}")

    started = time.perf_counter()
    shard = _write_cache(payloads, render, len(crops), size, Path(pixels_path), threads, fmt)
    index = pd.DataFrame({
        "id": order["crop_id"].astype(str),
        "name": order["name"].astype(str),
        "fold": order["fold"].astype("int64"),
        "role": np.where(order["split"].eq("test").to_numpy(bool), "test", "train"),
        **shard,
    })
    LOGGER.info("cached %d crops at %d px in %.1f s", len(index), size, time.perf_counter() - started)
    return index


def build_image_cache(images: pd.DataFrame, size: int, pixels_path: str | Path, *,
                      threads: int, fmt: str) -> pd.DataFrame:
    """Cache whole images (columns name, path, fold, role) at `size`; returns the index."""
    images = images.reset_index(drop=True)
    shard = _write_cache(_values_at(images["path"], np.arange(len(images))),
                         lambda path: [square_resize(_open_rgb(path), size)], len(images), size, Path(pixels_path),
                         threads, fmt)
    return pd.DataFrame({
        "id": images["name"].astype(str),
        "name": images["name"].astype(str),
        "fold": images["fold"].astype("int64"),
        "role": images["role"].astype(str),
        **shard,
    })


def background_crop_boxes(width: int, height: int, rng: np.random.Generator, *, n_train_crops: int,
                          min_side: int, max_side: int, valid_side: int,
                          valid_position: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Random training squares (side U[min_side, max_side], clipped to the image) and the fixed
    validation square of one background image, as xyxy arrays."""
    limit = min(width, height)
    sides = np.minimum(rng.integers(min_side, max_side + 1, size=n_train_crops), limit)
    lefts = np.floor(rng.random(n_train_crops) * (width - sides + 1))
    tops = np.floor(rng.random(n_train_crops) * (height - sides + 1))
    train = np.stack([lefts, tops, lefts + sides, tops + sides], axis=1).astype(float)
    side = min(valid_side, limit)
    left = min(int(valid_position[0] * width), width - side)
    top = min(int(valid_position[1] * height), height - side)
    valid = np.array([[left, top, left + side, top + side]], dtype=float)
    return train, valid


def build_background_crop_cache(backgrounds: pd.DataFrame, size: int, pixels_path: str | Path, *,
                                seed: int, n_train_crops: int, min_side: int, max_side: int,
                                valid_side: int, valid_position: tuple[float, float], threads: int,
                                fmt: str) -> pd.DataFrame:
    """Cache background crops (columns name, path, fold of the backgrounds table) at `size`.

    Each background gives `n_train_crops` rows with role `train` and one row with role `valid`;
    a trainer uses the `train` rows of the other folds and the `valid` row of its own fold.
    """
    if min_side < 1 or max_side < min_side:
        raise ValueError(f"background crops: need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    rows: list[dict[str, Any]] = []
    groups = []
    for position, item in enumerate(backgrounds.itertuples(index=False)):
        with Image.open(item.path) as handle:
            width, height = handle.size
        rng = np.random.default_rng([seed, position])
        train, valid = background_crop_boxes(width, height, rng, n_train_crops=n_train_crops,
                                             min_side=min_side, max_side=max_side,
                                             valid_side=valid_side, valid_position=valid_position)
        groups.append((item.path, np.vstack([train, valid]), item.name))
        rows += [{"id": f"{item.name}@{k}", "name": item.name, "fold": int(item.fold),
                  "role": "train" if k < n_train_crops else "valid"} for k in range(n_train_crops + 1)]

    def render(payload: tuple[str, np.ndarray, str]) -> list[np.ndarray]:
        path, boxes, name = payload
        return _crop_boxes(_open_rgb(path), boxes, size, f"background {name}")

    shard = _write_cache(groups, render, len(rows), size, Path(pixels_path), threads, fmt)
    return pd.concat([pd.DataFrame(rows, columns=ITEM_COLUMNS), shard], axis=1)


def write_index(index: pd.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    index[INDEX_COLUMNS].to_parquet(path, index=False)


def read_cache(pixels_path: str | Path, index_path: str | Path, *, decoders: int = 1
               ) -> tuple[PixelCache, pd.DataFrame]:
    """The shard (read like a uint8 array, `decoders` threads per batch) and its index; refuses a
    pair that does not match."""
    index = pd.read_parquet(index_path)
    if list(index.columns) != INDEX_COLUMNS:
        raise ValueError(f"crop cache {pixels_path}: index {index_path} has columns {list(index.columns)}, "
                         f"expected {INDEX_COLUMNS}")
    return PixelCache(pixels_path, index, decoders=decoders), index


def image_cache_rows(images: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Rows of the whole-image cache: every training image with a fold, then every kept test image."""
    paths = images.set_index("name")["path"]
    train = folds[["name", "fold"]].assign(role="train")
    test_names = images.loc[(images["split"] == "test") & images["keep"], "name"]
    test = pd.DataFrame({"name": test_names, "fold": -1, "role": "test"})
    rows = pd.concat([train, test], ignore_index=True)
    rows["path"] = paths.loc[rows["name"]].array  # by position; no Python string per row
    return rows


def build_cache(source: str, size: int, pixels_path: str | Path, index_path: str | Path, *,
                images: pd.DataFrame, crops: pd.DataFrame | None, folds: pd.DataFrame | None,
                backgrounds: pd.DataFrame | None, seed: int, threads: int, background_crops_per_image: int,
                background_min_side: int, background_max_side: int, background_valid_side: int,
                background_valid_position: tuple[float, float], fmt: str) -> dict[str, Any]:
    """Build one pixel cache (`crop_cache` module docstring) for a source and size, tiles in `fmt`.

    `images`: CURATED_IMAGES; `crops`: CROPS (source crops); `folds`: FOLDS (source images);
    `backgrounds`: the background table (name, path, fold; sources background_*).
    """
    started = time.perf_counter()
    if source == "crops":
        index = build_crop_cache(crops, images.set_index("name")["path"], size, pixels_path, threads=threads, fmt=fmt)
    elif source == "images":
        index = build_image_cache(image_cache_rows(images, folds), size, pixels_path, threads=threads, fmt=fmt)
    elif source == "background_crops":
        index = build_background_crop_cache(
            backgrounds, size, pixels_path, seed=seed, n_train_crops=background_crops_per_image,
            min_side=background_min_side, max_side=background_max_side, valid_side=background_valid_side,
            valid_position=tuple(background_valid_position), threads=threads, fmt=fmt)
    elif source == "background_images":
        index = build_image_cache(backgrounds.assign(role="train"), size, pixels_path, threads=threads, fmt=fmt)
    else:
        raise ValueError(f"unknown cache source {source!r}; expected one of {SOURCES}")
    write_index(index, index_path)
    return {"source": source, "size": size, "rows": len(index),
            "roles": {str(k): int(v) for k, v in index["role"].value_counts().items()},
            "format": fmt, "megabytes": round(Path(pixels_path).stat().st_size / 2**20, 2),
            "raw_megabytes": round(len(index) * size * size * 3 / 2**20, 2),
            "seconds": round(time.perf_counter() - started, 3)}
