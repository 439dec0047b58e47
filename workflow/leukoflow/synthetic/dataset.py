"""Synthetic mini-Cytologia: smear images, challenge tables and injected defects (docs/method.md §1).

The real challenge images are not redistributable, so the demo workflow runs on a generated
dataset in exactly the challenge's layout (`images/*.jpg`, `train.csv`, `test.csv`) plus two
answer files the real data lacks: `test_truth.csv` (the hidden test boxes and classes, for
scoring the demo) and `defects.parquet` (schema `tables.DEFECTS`, every injected defect).

Images imitate CellaVision crops: a pale pinkish background, overlapping red cells with central
pallor, and one or more white cells of the 23 challenge classes drawn from the per-class table
in `leukoflow.synthetic.morphology`. Everything is composed in optical density (absorbances add where
objects overlap) with vectorised numpy and OpenCV drawing on small local grids, then JPEG-encoded
with Pillow. Class frequencies, cells per image and image sizes follow the **[computed]**
statistics of docs/method.md §1.2-1.3.

Counting rule: `n_images` is the number of image files written, train and test together,
*including* the files added by the duplicate defects (`exact_duplicate`, `near_duplicate`,
`conflicting_duplicate`, `train_test_duplicate`, the retakes and the hard negatives of
`near_duplicates`). The remaining "base" images are split by
`test_fraction` into test and train. All other defects change base *train* images in place
(their boxes, labels or bytes), and no image carries more than one defect or is the source of
more than one duplicate, so every defect is unambiguous ground truth.

Determinism: the plan (names, classes, sizes, defect targets) comes from one generator seeded by
(seed, plan stream); every image is drawn from its own generator seeded by (seed, render stream,
image index), so the files are byte-identical for any number of worker processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.synthetic.annotations import BoxRow, Dataset
from leukoflow.synthetic.defects import inject_box_defects, inject_duplicates, inject_file_defects
from leukoflow.synthetic.visible_defects import inject_visible_defects
from leukoflow.synthetic.morphology import SMEAR_STYLE
from leukoflow.synthetic.near_duplicates import (
    HARD_NEGATIVE_KIND, inject_retakes, render_similar_smears,
)
from leukoflow.synthetic.plan import COPY_KINDS, DEFECT_KINDS, DEFECT_STREAM, PLAN_STREAM, draw_names, plan_images
from leukoflow.synthetic.render import render_all


def spread_rows(names: np.ndarray, rng: np.random.Generator, max_passes: int = 200) -> tuple[np.ndarray, int]:
    """A random row order in which rows of the same image are not adjacent (as in the challenge CSVs).

    Returns:
        The permutation and the number of adjacent same-image pairs left (0 unless impossible,
        e.g. one image holds more than half of the rows).
    """
    codes = pd.factorize(pd.Series(names, dtype=object))[0]
    order = rng.permutation(len(codes))
    for _ in range(max_passes):
        clashes = np.flatnonzero(codes[order][1:] == codes[order][:-1]) + 1
        if clashes.size == 0:
            return order, 0
        for i in clashes.tolist():
            j = int(rng.integers(len(order)))
            order[i], order[j] = order[j], order[i]
    return order, int((codes[order][1:] == codes[order][:-1]).sum())


def _box_frame(rows: list[BoxRow]) -> pd.DataFrame:
    return pd.DataFrame({
        "NAME": pd.Series([r.name for r in rows], dtype="str"),
        **{c: pd.Series([getattr(r, c) for r in rows], dtype="int64") for c in ("x1", "y1", "x2", "y2")},
        "class": pd.Series([r.label for r in rows], dtype="str"),
        "key": pd.Series([r.key for r in rows], dtype="int64"),
    })


@dataclass(frozen=True)
class OutputPaths:
    """One path per file the generator writes."""

    images: Path
    train_csv: Path
    test_csv: Path
    test_truth: Path
    defect_table: Path


def challenge_layout(out_dir: str | Path) -> dict[str, Path]:
    """The generator's output paths in the challenge layout under one folder (for scripts and tests)."""
    out_dir = Path(out_dir)
    return {"images": out_dir / "images", "train_csv": out_dir / "train.csv", "test_csv": out_dir / "test.csv",
            "test_truth": out_dir / "test_truth.csv", "defect_table": out_dir / "defects.parquet"}


def write_tables(data: Dataset, paths: OutputPaths, rng: np.random.Generator) -> dict[str, int]:
    """Write train.csv, test.csv, test_truth.csv and defects.parquet; return adjacency counts."""
    for path in (paths.train_csv, paths.test_csv, paths.test_truth, paths.defect_table):
        path.parent.mkdir(parents=True, exist_ok=True)
    train = _box_frame(data.train)
    train_order, train_adjacent = spread_rows(train["NAME"].to_numpy(), rng)
    train = train.iloc[train_order].reset_index(drop=True)
    train.drop(columns="key").to_csv(paths.train_csv, index=False)
    test = _box_frame(data.test)
    test_order, test_adjacent = spread_rows(test["NAME"].to_numpy(), rng)
    test = test.iloc[test_order].reset_index(drop=True)
    id_space = len(train) + len(test)
    test.insert(0, "trustii_id", rng.choice(id_space, size=len(test), replace=False).astype(np.int64) + 1)
    test[["trustii_id", "NAME"]].to_csv(paths.test_csv, index=False)
    test[["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]].to_csv(paths.test_truth, index=False)
    row_of_key = dict(zip(train["key"].tolist(), range(len(train))))
    defects = pd.DataFrame({
        "kind": pd.Series([d["kind"] for d in data.defects], dtype="str"),
        "name": pd.Series([d["name"] for d in data.defects], dtype="str"),
        "source": pd.Series([d["source"] for d in data.defects], dtype="str"),
        "row": pd.Series([row_of_key.get(d["row_key"], -1) for d in data.defects], dtype="int64"),
        "detail": pd.Series([d["detail"] for d in data.defects], dtype="str"),
    })
    tables.write_table(defects, paths.defect_table, tables.DEFECTS)
    return {"adjacent_train_rows": train_adjacent, "adjacent_test_rows": test_adjacent}


# ---------------------------------------------------------------------------------- entry point
def _check_arguments(images_dir: Path, n_images: int, test_fraction: float, jpeg_quality: int,
                     defects: dict[str, int]) -> None:
    unknown = sorted(set(defects) - set(DEFECT_KINDS))
    if unknown:
        raise ValueError(f"synthesize: unknown defect kinds {unknown}; known: {list(DEFECT_KINDS)}")
    negative = {kind: count for kind, count in defects.items() if int(count) != count or count < 0}
    if negative:
        raise ValueError(f"synthesize: defect counts must be non-negative integers, got {negative}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"synthesize: test_fraction must be in [0, 1), got {test_fraction}")
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"synthesize: jpeg_quality must be in [1, 95], got {jpeg_quality}")
    copies = sum(int(defects.get(kind, 0)) for kind in COPY_KINDS)
    if n_images - copies < 1:
        raise ValueError(f"synthesize: n_images={n_images} leaves no base image after {copies} duplicate copies")
    if images_dir.exists() and any(images_dir.iterdir()):
        raise FileExistsError(f"synthesize: {images_dir} is not empty; remove it first (files would mix)")


def synthesize(*, images: str | Path, train_csv: str | Path, test_csv: str | Path, test_truth: str | Path,
               defect_table: str | Path, n_images: int, test_fraction: float, seed: int, jpeg_quality: int,
               defects: dict[str, int], near_duplicate_max_distance: int, threads: int) -> dict[str, object]:
    """Generate a synthetic dataset in the challenge layout (rule `synthesize`).

    Args:
        images: image folder to create and fill (must be empty or absent).
        train_csv, test_csv, test_truth: the challenge tables and the hidden test answers.
        defect_table: defects.parquet, every injected defect (schema `tables.DEFECTS`).
        n_images: image files written in total (train + test, including duplicate copies).
        test_fraction: share of the base (non-copy) images that go to test, in [0, 1).
        seed: the only source of randomness; the same seed gives byte-identical files.
        jpeg_quality: Pillow JPEG quality of the images (1-95).
        defects: count per kind of DEFECT_KINDS (missing kinds: 0).
        near_duplicate_max_distance: largest pHash Hamming distance a near duplicate may have from its
            source; a variant that lands further away is replaced by a JPEG re-encode.
        threads: rendering processes (1 renders in this process; more are spawned workers).

    Returns:
        JSON-serialisable summary: counts of images, boxes, rows and defects, timing.

    Raises:
        ValueError: unknown defect kind, bad ranges, or too few base train images for the defects.
        FileExistsError: `images` already holds files.
    """
    started = time.perf_counter()
    paths = OutputPaths(Path(images), Path(train_csv), Path(test_csv), Path(test_truth), Path(defect_table))
    _check_arguments(paths.images, n_images, test_fraction, jpeg_quality, defects)
    defects = {kind: int(defects.get(kind, 0)) for kind in DEFECT_KINDS}
    paths.images.mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, PLAN_STREAM]))
    n_base = n_images - sum(defects[kind] for kind in COPY_KINDS)
    n_test = int(round(test_fraction * n_base))
    names = draw_names(plan_rng, n_images)
    plans, target_indices = plan_images(n_base=n_base, n_test=n_test, names=names, defects=defects,
                                        rng=plan_rng, style=SMEAR_STYLE)
    targets = {kind: [names[i] for i in indices] for kind, indices in target_indices.items()}
    copy_iter = iter(names[n_base:])
    copy_names = {kind: [next(copy_iter) for _ in range(defects[kind])] for kind in COPY_KINDS}
    rendered = render_all(plans, seed=seed, images_dir=paths.images, jpeg_quality=jpeg_quality, style=SMEAR_STYLE,
                          workers=max(1, threads))
    data = Dataset(paths.images, {p.name: (p.width, p.height) for p in plans})
    for plan, image in zip(plans, rendered):
        for cell, box in zip(plan.cells, image.boxes):
            data.add_row(plan.split, plan.name, box, cell.code)
    defect_rng = np.random.default_rng(np.random.SeedSequence([seed, DEFECT_STREAM]))
    by_name = {image.name: image for image in rendered}
    inject_box_defects(data, defect_rng, targets, by_name)
    inject_visible_defects(data, defect_rng, targets)
    inject_duplicates(data, defect_rng, targets, copy_names, jpeg_quality, near_duplicate_max_distance)
    inject_retakes(data, defect_rng, targets, copy_names, jpeg_quality)
    render_similar_smears(data, plans, targets[HARD_NEGATIVE_KIND], copy_names[HARD_NEGATIVE_KIND], seed=seed,
                          jpeg_quality=jpeg_quality, style=SMEAR_STYLE, first_index=n_images)
    inject_file_defects(data, defect_rng, targets, jpeg_quality)
    adjacency = write_tables(data, paths, defect_rng)
    seconds = time.perf_counter() - started
    n_test_images = n_test + defects["train_test_duplicate"]
    return {
        "n_images": n_images, "n_base_images": n_base, "n_train_images": n_images - n_test_images,
        "n_test_images": n_test_images, "n_train_boxes": len(data.train), "n_test_rows": len(data.test),
        "defects": {kind: sum(d["kind"] == kind for d in data.defects) for kind in DEFECT_KINDS},
        **adjacency, "seconds": round(seconds, 3), "images_per_second": round(n_images / seconds, 1),
    }
