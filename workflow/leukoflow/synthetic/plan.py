"""The plan of a synthetic dataset: names, splits, cells per image, classes, sizes, defect targets.

Everything here comes from one generator seeded by (seed, plan stream), so the plan is fixed
before any image is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leukoflow.constants import CLASSES
from leukoflow.synthetic.morphology import (
    IMAGE_ASPECT_JITTER, IMAGE_SIDES, LARGE_SIDES, MORPHOLOGY, OTHER_CLASS_IN_MULTI_CELL_IMAGE,
    TEST_CELLS_PER_IMAGE, TRAIN_CELLS_PER_IMAGE, SmearStyle,
)

DEFECT_KINDS: tuple[str, ...] = (
    "exact_duplicate", "near_duplicate", "conflicting_duplicate", "train_test_duplicate",
    "out_of_image_box", "red_cell_box", "oversized_box", "wrong_label", "unannotated_border_cell",
    "truncated_jpeg", "unreadable_file", "greyscale_image",
    "undersized_box", "shifted_box", "unannotated_cell",  # synthetic.visible_defects
) + (
    # realistic retakes and hard negatives (near_duplicates.py); last, so the earlier kinds keep their draws
    "shifted_duplicate", "refocused_duplicate", "recoloured_duplicate", "similar_smear",
)
COPY_KINDS: tuple[str, ...] = DEFECT_KINDS[:4] + DEFECT_KINDS[-4:]  # defects that add an image file
MIN_CELLS_FOR_UNANNOTATED = 2  # an unannotated_cell target keeps at least one annotated cell

# Independent random streams under one seed.
PLAN_STREAM, RENDER_STREAM, TEXTURE_STREAM, DEFECT_STREAM = 1, 2, 3, 4
# Crowded images get a larger size: boxes cover at most this share of the image area
# (docs/method.md §1.3: box area / image area is mostly 5-25 %), and one cell at most this share of a side.
MAX_BOX_AREA_SHARE = 0.4
MAX_CELL_SIDE_SHARE = 0.8

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CellPlan:
    code: str
    width: float  # px, target box width
    height: float  # px, target box height


@dataclass(frozen=True)
class ImagePlan:
    index: int
    name: str
    split: str  # train | test
    width: int
    height: int
    cells: tuple[CellPlan, ...]
    border_cell: str  # class code of an unannotated white cell cut by the border, "" for none
    free_red_cell: bool  # make sure a red cell lies apart from the white cells (red_cell_box)


@dataclass(frozen=True)
class RenderedImage:
    index: int
    name: str
    boxes: tuple[Box, ...]  # xyxy px of plan.cells, clipped to the image
    red_cell_box: Box | None
    border_cell_box: Box | None


def draw_names(rng: np.random.Generator, n: int) -> list[str]:
    """Unique NAMEs shaped like the challenge's (`^[0-9a-f]{8}-[0-9a-f]\\.jpg$`)."""
    values = rng.integers(0, 1 << 36, size=n, dtype=np.int64)
    while len(np.unique(values)) < n:
        _, first = np.unique(values, return_index=True)
        repeated = np.setdiff1d(np.arange(n), first)
        values[repeated] = rng.integers(0, 1 << 36, size=repeated.size, dtype=np.int64)
    return [f"{value >> 4:08x}-{value & 0xF:x}.jpg" for value in values.tolist()]


def draw_cell_counts(rng: np.random.Generator, n: int, histogram: dict[int, int]) -> np.ndarray:
    """Number of white cells per image, drawn from a docs/method.md §1.3 histogram."""
    counts = np.array(list(histogram), dtype=np.int64)
    weights = np.array(list(histogram.values()), dtype=float)
    return rng.choice(counts, size=n, p=weights / weights.sum())


def _class_weights(multi: bool) -> np.ndarray:
    """Chance of each class as the first cell of a single- or multi-cell image (docs/method.md §1.2)."""
    rows = [MORPHOLOGY[code] for code in CLASSES]
    weights = np.array([row.train_boxes * (row.multi_box_share if multi else 1 - row.multi_box_share)
                        for row in rows])
    return weights / weights.sum()


def draw_image_classes(rng: np.random.Generator, n_cells: np.ndarray) -> list[tuple[str, ...]]:
    """Class codes of the cells of each image: one main class, extra cells mostly share it."""
    first = rng.choice(len(CLASSES), size=len(n_cells), p=_class_weights(multi=False))
    first_multi = rng.choice(len(CLASSES), size=len(n_cells), p=_class_weights(multi=True))
    overall = np.array([MORPHOLOGY[code].train_boxes for code in CLASSES], dtype=float)
    overall /= overall.sum()
    classes = []
    for count, single, multi in zip(n_cells.tolist(), first.tolist(), first_multi.tolist()):
        main = single if count == 1 else multi
        extra = rng.choice(len(CLASSES), size=count - 1, p=overall)
        other = rng.random(count - 1) < OTHER_CLASS_IN_MULTI_CELL_IMAGE
        codes = [main] + [e if o else main for e, o in zip(extra.tolist(), other.tolist())]
        classes.append(tuple(CLASSES[c] for c in codes))
    return classes


def draw_cell_sizes(rng: np.random.Generator, codes: tuple[str, ...], style: SmearStyle) -> tuple[CellPlan, ...]:
    """Target box size of each cell: its class median (docs/method.md §1.2) with log-normal jitter."""
    scale = np.exp(rng.normal(0.0, style.cell_size_jitter, size=len(codes)))
    aspect = np.exp(rng.normal(0.0, style.cell_size_jitter / 2, size=len(codes)))
    return tuple(CellPlan(code, MORPHOLOGY[code].median_wh[0] * s * a, MORPHOLOGY[code].median_wh[1] * s / a)
                 for code, s, a in zip(codes, scale.tolist(), aspect.tolist()))


def draw_image_size(rng: np.random.Generator, cells: tuple[CellPlan, ...]) -> tuple[int, int]:
    """(width, height): mostly ~350-390 px near-square, large ones for big or crowded content."""
    cell_area = sum(cell.width * cell.height for cell in cells)
    ranges = [side_range for side_range, _ in IMAGE_SIDES]
    largest_regular = max(high for _, high in ranges)
    wants_large = (rng.random() < MORPHOLOGY[cells[0].code].large_image_probability
                   or cell_area > MAX_BOX_AREA_SHARE * largest_regular ** 2)
    if wants_large:
        sides = np.array([side for side, _ in LARGE_SIDES])
        side = int(rng.choice(sides, p=np.array([p for _, p in LARGE_SIDES])))
        if cell_area > MAX_BOX_AREA_SHARE * side ** 2:
            side = int(sides.max())
        return side, side
    low, high = ranges[rng.choice(len(ranges), p=np.array([p for _, p in IMAGE_SIDES]))]
    if max(max(cell.width, cell.height) for cell in cells) > MAX_CELL_SIDE_SHARE * low:
        low, high = ranges[-1]
    width = int(rng.integers(low, high + 1))
    return width, width + int(rng.integers(IMAGE_ASPECT_JITTER[0], IMAGE_ASPECT_JITTER[1] + 1))


def required_train_images(defects: dict[str, int]) -> int:
    """Base train images the defects need: each defect takes its own image (or duplicate source)."""
    return sum(defects.values())


def assign_defect_targets(rng: np.random.Generator, train_indices: np.ndarray,
                          defects: dict[str, int]) -> dict[str, list[int]]:
    """Disjoint base train images per defect kind (sources for the duplicate kinds)."""
    needed = required_train_images(defects)
    if needed > len(train_indices):
        raise ValueError(
            f"synthesize: the defects need {needed} distinct base train images but only "
            f"{len(train_indices)} are planned; raise n_images or lower test_fraction/defects")
    chosen = rng.permutation(train_indices)[:needed].tolist()
    targets, start = {}, 0
    for kind in DEFECT_KINDS:
        count = defects.get(kind, 0)
        targets[kind] = sorted(chosen[start:start + count])
        start += count
    return targets


def plan_images(*, n_base: int, n_test: int, names: list[str], defects: dict[str, int],
                rng: np.random.Generator, style: SmearStyle) -> tuple[list[ImagePlan], dict[str, list[int]]]:
    """Plan every base image (split, size, cells) and pick the defect targets among train images."""
    splits = np.array(["train"] * (n_base - n_test) + ["test"] * n_test)
    rng.shuffle(splits)
    is_test = splits == "test"
    n_cells = np.where(is_test, draw_cell_counts(rng, n_base, TEST_CELLS_PER_IMAGE),
                       draw_cell_counts(rng, n_base, TRAIN_CELLS_PER_IMAGE))
    targets = assign_defect_targets(rng, np.flatnonzero(~is_test), defects)
    unannotated = targets["unannotated_cell"]  # a cell loses its annotation: the image needs another one
    n_cells[unannotated] = np.maximum(n_cells[unannotated], MIN_CELLS_FOR_UNANNOTATED)
    classes = draw_image_classes(rng, n_cells)
    border = set(targets["unannotated_border_cell"])
    free_red = set(targets["red_cell_box"])
    border_codes = rng.choice(len(CLASSES), size=n_base, p=_class_weights(multi=False))
    plans = []
    for index in range(n_base):
        cells = draw_cell_sizes(rng, classes[index], style)
        width, height = draw_image_size(rng, cells)
        plans.append(ImagePlan(index, names[index], str(splits[index]), width, height, cells,
                               CLASSES[border_codes[index]] if index in border else "", index in free_red))
    return plans, targets

