"""Synthetic mini-Cytologia: smear images, challenge tables and injected defects (METHOD.md §1).

The real challenge images are not redistributable, so the demo workflow runs on a generated
dataset in exactly the challenge's layout (`images/*.jpg`, `train.csv`, `test.csv`) plus two
answer files the real data lacks: `test_truth.csv` (the hidden test boxes and classes, for
scoring the demo) and `defects.parquet` (schema `tables.DEFECTS`, every injected defect).

Images imitate CellaVision crops: a pale pinkish background, overlapping red cells with central
pallor, and one or more white cells of the 23 challenge classes drawn from the per-class table
in `leukoflow.synthetic.morphology`. Everything is composed in optical density (absorbances add where
objects overlap) with vectorised numpy and OpenCV drawing on small local grids, then JPEG-encoded
with Pillow. Class frequencies, cells per image and image sizes follow the **[computed]**
statistics of METHOD.md §1.2-1.3.

Counting rule: `n_images` is the number of image files written, train and test together,
*including* the files added by the duplicate defects (`exact_duplicate`, `near_duplicate`,
`conflicting_duplicate`, `train_test_duplicate`). The remaining "base" images are split by
`test_fraction` into test and train. All other defects change base *train* images in place
(their boxes, labels or bytes), and no image carries more than one defect or is the source of
more than one duplicate, so every defect is unambiguous ground truth.

Determinism: the plan (names, classes, sizes, defect targets) comes from one generator seeded by
(seed, plan stream); every image is drawn from its own generator seeded by (seed, render stream,
image index), so the files are byte-identical for any number of worker processes.
"""

from __future__ import annotations

import io
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from leukoflow import tables
from leukoflow.constants import CLASSES
from leukoflow.synthetic.morphology import (
    CHROMATIN_TEXTURES, CONFUSABLE, GRANULE_STYLES, IMAGE_ASPECT_JITTER, IMAGE_SIDES, LARGE_SIDES,
    MORPHOLOGY, OTHER_CLASS_IN_MULTI_CELL_IMAGE, SMEAR_STYLE, TEST_CELLS_PER_IMAGE,
    TRAIN_CELLS_PER_IMAGE, Morphology, SmearStyle,
)

DEFECT_KINDS: tuple[str, ...] = (
    "exact_duplicate", "near_duplicate", "conflicting_duplicate", "train_test_duplicate",
    "out_of_image_box", "red_cell_box", "oversized_box", "wrong_label", "unannotated_border_cell",
    "truncated_jpeg", "unreadable_file", "greyscale_image",
)
COPY_KINDS: tuple[str, ...] = DEFECT_KINDS[:4]  # defects that add an image file
NEAR_DUPLICATE_VARIANTS: tuple[str, ...] = ("reencode", "resize", "crop")
UNREADABLE_BYTES = b"<!DOCTYPE html>\n<html><body><h1>503 Service Unavailable</h1></body></html>\n"

# Independent random streams under one seed.
_PLAN_STREAM, _RENDER_STREAM, _TEXTURE_STREAM, _DEFECT_STREAM = 1, 2, 3, 4
_TEXTURE_SIDE = 512
_FIELD_SIDE = 1024
_RED_CELL_SPRITES = 48
_POLYGON_SHIFT = 3  # cv2 fixed-point bits: outlines are placed to 1/8 px
_PLACEMENT_TRIES = 40
# Crowded images get a larger size: boxes cover at most this share of the image area
# (METHOD §1.3: box area / image area is mostly 5-25 %), and one cell at most this share of a side.
MAX_BOX_AREA_SHARE = 0.4
MAX_CELL_SIDE_SHARE = 0.8
# Defect parameters (the kinds and their counts are the caller's; these set how each looks).
CONFUSABLE_LABEL_SHARE = 0.7  # wrong labels taken from morphology.CONFUSABLE, the rest uniform
OUT_OF_IMAGE_PX = (1, 20)  # how far a coordinate is pushed past the border (METHOD §1.3: negative x1/y1)
OUT_OF_IMAGE_COORDINATE_P = {"x1": 0.35, "y1": 0.35, "x2": 0.15, "y2": 0.15}
OVERSIZE_SCALE = (2.0, 3.0)  # side multiplier of an oversized box (before clipping)
TRUNCATE_KEEP = (0.6, 0.85)  # share of the JPEG bytes a truncated file keeps
NEAR_QUALITY_DROP = (8, 25)  # JPEG quality lost by a re-encoded near duplicate
NEAR_RESIZE_PX = (2, 6)  # px a resized near duplicate gains or loses per side length
NEAR_CROP_PX = 4  # at most this many px cut from each edge of a cropped near duplicate

Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------------------- plan
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
    """Number of white cells per image, drawn from a METHOD §1.3 histogram."""
    counts = np.array(list(histogram), dtype=np.int64)
    weights = np.array(list(histogram.values()), dtype=float)
    return rng.choice(counts, size=n, p=weights / weights.sum())


def _class_weights(multi: bool) -> np.ndarray:
    """Chance of each class as the first cell of a single- or multi-cell image (METHOD §1.2)."""
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
    """Target box size of each cell: its class median (METHOD §1.2) with log-normal jitter."""
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
    classes = draw_image_classes(rng, n_cells)
    targets = assign_defect_targets(rng, np.flatnonzero(~is_test), defects)
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


# ----------------------------------------------------------------------------------- textures
@dataclass(frozen=True)
class Textures:
    """Noise fields and red-cell sprites shared by all images of one seed (built once per process)."""

    chromatin: dict[str, np.ndarray]  # name -> (T, T) float32, zero mean, unit std
    illumination: np.ndarray  # (F, F) float32, slow field, unit std
    thickness: np.ndarray  # (F, F) float32, slower field (~2 cycles per image), unit std
    noise: np.ndarray  # (3, F, F) float32, sensor noise in px values (planar)
    red_cells: tuple[np.ndarray, ...]  # (s, s) float32 optical density of one red cell at unit stain


def _standardise(values: np.ndarray) -> np.ndarray:
    return ((values - values.mean()) / values.std()).astype(np.float32)


def _red_cell_sprite(rng: np.random.Generator, style: SmearStyle) -> np.ndarray:
    """Biconcave disc: density highest at the rim, pale centre, slightly elliptic, soft edge."""
    radius = rng.uniform(*style.red_cell_radius)
    squash = rng.uniform(0.88, 1.0)
    pallor = rng.uniform(*style.red_cell_pallor)
    half = int(np.ceil(radius)) + 3
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = (-x * np.sin(theta) + y * np.cos(theta)) / squash
    d = np.sqrt(u * u + v * v)
    disc = np.clip(radius - d + 0.5, 0.0, 1.0)
    centre = 1.0 - pallor * np.exp(-(d / (0.5 * radius)) ** 2)
    rim = 1.0 + 0.2 * np.exp(-((d - 0.85 * radius) / (0.12 * radius)) ** 2)
    return (disc * centre * rim).astype(np.float32)


def build_textures(seed: int, style: SmearStyle = SMEAR_STYLE) -> Textures:
    """Deterministic texture set of a seed (identical in every worker process)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TEXTURE_STREAM]))

    def smooth(sigma_x: float, sigma_y: float) -> np.ndarray:
        values = rng.standard_normal((_TEXTURE_SIDE, _TEXTURE_SIDE), dtype=np.float32)
        return _standardise(cv2.GaussianBlur(values, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y,
                                             borderType=cv2.BORDER_REFLECT))

    chromatin = {"fine": smooth(1.0, 1.0), "clumped": _standardise(np.tanh(1.6 * smooth(2.2, 2.2))),
                 "streak": smooth(4.0, 1.2)}
    coarse = rng.standard_normal((12, 12), dtype=np.float32)
    illumination = _standardise(cv2.resize(coarse, (_FIELD_SIDE, _FIELD_SIDE), interpolation=cv2.INTER_CUBIC))
    coarser = rng.standard_normal((6, 6), dtype=np.float32)
    thickness = _standardise(cv2.resize(coarser, (_FIELD_SIDE, _FIELD_SIDE), interpolation=cv2.INTER_CUBIC))
    noise = rng.standard_normal((3, _FIELD_SIDE, _FIELD_SIDE), dtype=np.float32) * np.float32(style.sensor_noise)
    sprites = tuple(_red_cell_sprite(rng, style) for _ in range(_RED_CELL_SPRITES))
    return Textures(chromatin, illumination, thickness, noise, sprites)


def _crop(texture: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random window over the last two axes of a texture field (tiled when the field is smaller)."""
    if height > texture.shape[-2] or width > texture.shape[-1]:
        reps = (1,) * (texture.ndim - 2) + (height // texture.shape[-2] + 1, width // texture.shape[-1] + 1)
        texture = np.tile(texture, reps)
    y = int(rng.integers(0, texture.shape[-2] - height + 1))
    x = int(rng.integers(0, texture.shape[-1] - width + 1))
    return texture[..., y:y + height, x:x + width]


# ------------------------------------------------------------------------------------ drawing
def optical_density(rgb: tuple[float, float, float]) -> np.ndarray:
    """-ln(rgb/255) per channel: the absorbance of a stain that looks `rgb` on white."""
    return -np.log(np.clip(np.asarray(rgb, dtype=np.float32), 1.0, 255.0) / 255.0)


@dataclass(frozen=True)
class Stain:
    """One image's staining: multipliers of every optical density and the base colours."""

    tint: np.ndarray  # (3,) per-channel multiplier of white-cell densities
    nucleus: np.ndarray  # (3,) nucleus optical density at chromatin 1
    red_cell: np.ndarray  # (3,) red cell optical density
    background: np.ndarray  # (3,) background RGB


def draw_stain(rng: np.random.Generator, style: SmearStyle) -> Stain:
    strength = rng.uniform(*style.stain_strength)
    tint = (np.exp(rng.normal(0.0, style.stain_jitter, 3)) * strength).astype(np.float32)
    red_cell = optical_density(style.red_cell_rgb) * np.exp(rng.normal(0.0, style.stain_jitter, 3))
    background = np.asarray(style.background_rgb, dtype=np.float32) + rng.normal(0, style.background_jitter, 3)
    return Stain(tint, optical_density(style.nucleus_rgb) * tint, red_cell.astype(np.float32),
                 np.clip(background, 0, 255).astype(np.float32))


def _outline(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, angle: float,
             roughness: float, n: int = 64) -> np.ndarray:
    """(n, 2) float polygon of an irregular ellipse: low harmonics plus ragged jitter."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amplitude = rng.normal(0.0, roughness, size=(5, 1)) / k
    radius = 1.0 + (amplitude * np.cos(k * t + rng.uniform(0, 2 * np.pi, size=(5, 1)))).sum(0)
    radius += rng.normal(0.0, roughness * 0.25, size=n)
    u, v = rx * radius * np.cos(t), ry * radius * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)


# Masks are float32 drawings in [0, 1]; the Gaussian blur that follows every drawing gives the
# soft optical edges, so no anti-aliased (8-bit only) OpenCV drawing is needed.
_LINE = cv2.LINE_8


def _fill(mask: np.ndarray, polygon: np.ndarray, value: float = 1.0) -> None:
    points = np.round(polygon * (1 << _POLYGON_SHIFT)).astype(np.int32)[:, None, :]
    cv2.fillPoly(mask, [points], value, lineType=_LINE, shift=_POLYGON_SHIFT)


def _soft(mask: np.ndarray, blur: float) -> np.ndarray:
    """float32 drawing -> alpha with optically soft edges."""
    return cv2.GaussianBlur(mask, (0, 0), blur)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


@dataclass(frozen=True)
class CellFrame:
    """A white cell's geometry in local region coordinates."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float

    @property
    def radius(self) -> float:
        return float(np.sqrt(self.rx * self.ry))


def _nucleus_round(mask, rng, frame, ncx, ncy, r_n, nc):
    squash = rng.uniform(1.0, 1.15)
    _fill(mask, _outline(rng, ncx, ncy, r_n * squash, r_n / squash, rng.uniform(0, np.pi), 0.03))


def _nucleus_kidney(mask, rng, frame, ncx, ncy, r_n, nc):
    r_n *= 1.12  # the notch removes area
    _nucleus_round(mask, rng, frame, ncx, ncy, r_n, nc)
    toward = rng.uniform(0, 2 * np.pi)
    notch = r_n * rng.uniform(0.4, 0.6)
    cv2.circle(mask, _pt(ncx + 1.05 * r_n * np.cos(toward), ncy + 1.05 * r_n * np.sin(toward)),
               int(round(notch)), 0.0, -1, _LINE)


def _nucleus_band(mask, rng, frame, ncx, ncy, r_n, nc):
    rho = 0.5 * frame.radius
    span = rng.uniform(170, 270)
    thickness = nc * np.pi * frame.radius ** 2 / (rho * np.radians(span))
    thickness = float(np.clip(thickness, 0.12 * frame.radius, 0.3 * frame.radius))
    start = rng.uniform(0, 360)
    cv2.ellipse(mask, _pt(frame.cx, frame.cy), _pt(rho, rho * rng.uniform(0.75, 1.0)), 0, start, start + span,
                1.0, max(2, int(round(thickness))), _LINE)


def _nucleus_lobed(mask, rng, frame, ncx, ncy, r_n, nc, lobes=(3, 5)):
    n = int(rng.integers(lobes[0], lobes[1] + 1))
    rho = rng.uniform(0.35, 0.5) * frame.radius
    span = np.radians(rng.uniform(100, 160) if n == 2 else rng.uniform(140, 260))
    start = rng.uniform(0, 2 * np.pi)
    r_lobe = frame.radius * np.sqrt(nc / n) * 1.05
    centres = [(frame.cx + rho * np.cos(start + span * i / (n - 1)), frame.cy + rho * np.sin(start + span * i / (n - 1)))
               for i in range(n)]
    for x, y in centres:
        r = r_lobe * rng.uniform(0.85, 1.1)
        _fill(mask, _outline(rng, x, y, r * 1.1, r / 1.1, rng.uniform(0, np.pi), 0.04, n=32))
    for (x0, y0), (x1, y1) in zip(centres[:-1], centres[1:]):
        cv2.line(mask, _pt(x0, y0), _pt(x1, y1), 1.0, max(2, int(round(0.22 * r_lobe))), _LINE)


def _nucleus_cleaved(mask, rng, frame, ncx, ncy, r_n, nc):
    _nucleus_round(mask, rng, frame, ncx, ncy, r_n, nc)
    toward = rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(0.0, 0.4) * r_n
    cv2.line(mask, _pt(ncx + 1.2 * r_n * np.cos(toward), ncy + 1.2 * r_n * np.sin(toward)),
             _pt(ncx + depth * np.cos(toward), ncy + depth * np.sin(toward)), 0.0, 2, _LINE)


def _nucleus_convoluted(mask, rng, frame, ncx, ncy, r_n, nc):
    _nucleus_round(mask, rng, frame, ncx, ncy, r_n, nc)
    for _ in range(int(rng.integers(3, 7))):
        start = rng.uniform(-0.7, 0.7, size=2) * r_n
        steps = np.cumsum(rng.normal(0.0, 0.25 * r_n, size=(4, 2)), axis=0)
        path = np.vstack([start, start + steps]) + np.array([ncx, ncy])
        cv2.polylines(mask, [np.round(path).astype(np.int32)[:, None, :]], False, 0.27, 2, _LINE)


def _nucleus_smudge(mask, rng, frame, ncx, ncy, r_n, nc):
    squash = rng.uniform(1.0, 1.3)
    _fill(mask, _outline(rng, ncx, ncy, r_n * squash, r_n / squash, rng.uniform(0, np.pi), 0.25, n=96))


_NUCLEUS_DRAWERS = {
    "round": _nucleus_round, "kidney": _nucleus_kidney, "band": _nucleus_band, "lobed": _nucleus_lobed,
    "cleaved": _nucleus_cleaved, "convoluted": _nucleus_convoluted, "smudge": _nucleus_smudge,
}


def _nucleus_mask(rng: np.random.Generator, morph: Morphology, frame: CellFrame, shape_hw: tuple[int, int],
                  blur: float) -> np.ndarray:
    """float32 alpha of the nucleus in the local region (zeros for anucleate platelets)."""
    shapes = list(morph.nucleus_shapes)
    shape = shapes[rng.choice(len(shapes), p=np.array(list(morph.nucleus_shapes.values())))]
    if shape == "none":
        return np.zeros(shape_hw, dtype=np.float32)
    nc = rng.uniform(*morph.nc_ratio)
    r_n = frame.radius * np.sqrt(nc)
    direction = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(*morph.nucleus_offset) * max(frame.radius - r_n, 0.0)
    ncx, ncy = frame.cx + shift * np.cos(direction), frame.cy + shift * np.sin(direction)
    mask = np.zeros(shape_hw, dtype=np.float32)
    if shape == "lobed":
        _nucleus_lobed(mask, rng, frame, ncx, ncy, r_n, nc, lobes=morph.lobes)
    else:
        _NUCLEUS_DRAWERS[shape](mask, rng, frame, ncx, ncy, r_n, nc)
    return _soft(mask, blur)


def _nucleoli(rng: np.random.Generator, morph: Morphology, nucleus: np.ndarray, frame: CellFrame) -> np.ndarray:
    """Factor (<= 1) that lightens the nucleus where nucleoli sit."""
    count = int(rng.integers(morph.nucleoli[0], morph.nucleoli[1] + 1))
    factor = np.ones_like(nucleus)
    inside = np.argwhere(nucleus > 0.9)
    if count == 0 or len(inside) == 0:
        return factor
    spots = np.zeros(nucleus.shape, dtype=np.float32)
    for y, x in inside[rng.integers(0, len(inside), size=count)]:
        radius = max(2, int(round(frame.radius * rng.uniform(0.07, 0.12))))
        cv2.circle(spots, (int(x), int(y)), radius, 1.0, -1, _LINE)
    return factor - 0.55 * _soft(spots, 1.2)


def _granules(rng: np.random.Generator, morph: Morphology, frame: CellFrame, cell: np.ndarray,
              nucleus: np.ndarray) -> np.ndarray:
    """float32 granule density map (includes Auer rods) in the local region."""
    style = GRANULE_STYLES[morph.granules]
    area = np.pi * frame.rx * frame.ry
    count = int(rng.uniform(*morph.granule_density) * area / 1000.0)
    rods = int(rng.integers(morph.auer_rods[0], morph.auer_rods[1] + 1))
    density = np.zeros(cell.shape, dtype=np.float32)
    if count:
        spread = 0.6 if style.central else 1.0
        radius = np.sqrt(rng.random(3 * count)) * spread
        theta = rng.uniform(0, 2 * np.pi, 3 * count)
        xs = np.clip(np.round(frame.cx + radius * frame.rx * np.cos(theta)), 0, cell.shape[1] - 1).astype(np.intp)
        ys = np.clip(np.round(frame.cy + radius * frame.ry * np.sin(theta)), 0, cell.shape[0] - 1).astype(np.intp)
        keep = cell[ys, xs] > 0.5
        if not style.over_nucleus:
            keep &= nucleus[ys, xs] < 0.5
        ys, xs = ys[keep][:count], xs[keep][:count]
        np.add.at(density, (ys, xs), rng.uniform(0.6, 1.2, size=len(ys)).astype(np.float32))
        density = cv2.GaussianBlur(density, (0, 0), style.sigma) * np.float32(2 * np.pi * style.sigma ** 2)
    for _ in range(rods):
        length = frame.radius * rng.uniform(0.25, 0.5)
        theta = rng.uniform(0, 2 * np.pi)
        at = rng.uniform(0.45, 0.75) * frame.radius
        x, y = frame.cx + at * np.cos(rng.uniform(0, 2 * np.pi)), frame.cy + at * np.sin(rng.uniform(0, 2 * np.pi))
        cv2.line(density, _pt(x, y), _pt(x + length * np.cos(theta), y + length * np.sin(theta)), 1.3, 2, _LINE)
    return density * np.float32(style.amplitude)


def draw_white_cell(od: np.ndarray, rng: np.random.Generator, morph: Morphology, stain: Stain,
                    textures: Textures, style: SmearStyle, cx: float, cy: float, rx: float, ry: float,
                    angle: float) -> tuple[float, float, float, float]:
    """Add one white cell to the planar optical-density canvas `od` (3, H, W) in place.

    Returns:
        The cell's outline extent (x_min, y_min, x_max, y_max) in image px, unclipped.
    """
    height, width = od.shape[1:]
    reach = max(rx, ry) * 1.35 + 4
    x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
    x1, y1 = min(width, int(cx + reach) + 1), min(height, int(cy + reach) + 1)
    if x1 <= x0 or y1 <= y0:
        return cx - rx, cy - ry, cx + rx, cy + ry
    frame = CellFrame(cx - x0, cy - y0, rx, ry, angle)
    shape_hw = (y1 - y0, x1 - x0)
    outline = _outline(rng, frame.cx, frame.cy, rx, ry, angle, morph.roughness)
    cell = np.zeros(shape_hw, dtype=np.float32)
    _fill(cell, outline)
    for _ in range(int(rng.integers(morph.vacuoles[0], morph.vacuoles[1] + 1))):
        at, theta = rng.uniform(0.5, 0.85) * frame.radius, rng.uniform(0, 2 * np.pi)
        cv2.circle(cell, _pt(frame.cx + at * np.cos(theta), frame.cy + at * np.sin(theta)),
                   max(2, int(frame.radius * rng.uniform(0.05, 0.1))), 0.35, -1, _LINE)
    cell = _soft(cell, style.edge_blur)
    nucleus = _nucleus_mask(rng, morph, frame, shape_hw, style.edge_blur) * cell
    texture_name, contrast = CHROMATIN_TEXTURES[morph.chromatin_texture]
    texture = _crop(textures.chromatin[texture_name], rng, *shape_hw)
    if texture_name == "streak":  # smear direction differs from cell to cell
        turn = cv2.getRotationMatrix2D((shape_hw[1] / 2, shape_hw[0] / 2), rng.uniform(0, 180), 1.0)
        texture = cv2.warpAffine(texture, turn, (shape_hw[1], shape_hw[0]), borderMode=cv2.BORDER_REFLECT)
    chromatin = rng.uniform(*morph.chromatin) * np.clip(1.0 + contrast * texture, 0.2, None)
    nuclear = nucleus * chromatin * _nucleoli(rng, morph, nucleus, frame)
    cytoplasm = cell * (1.0 - nucleus) * np.float32(rng.uniform(*morph.cytoplasm_density))
    granules = _granules(rng, morph, frame, cell, nucleus)
    cytoplasm_od = optical_density(morph.cytoplasm_rgb) * stain.tint
    granule_od = optical_density(GRANULE_STYLES[morph.granules].rgb) * stain.tint
    has_granules = morph.granules != "none" or morph.auer_rods[1] > 0
    for channel in range(3):  # planar canvas: each channel is a contiguous plane
        plane = od[channel, y0:y1, x0:x1]
        plane += cytoplasm * cytoplasm_od[channel]
        plane += nuclear * stain.nucleus[channel]
        if has_granules:
            plane += granules * granule_od[channel]
    xs, ys = outline[:, 0] + x0, outline[:, 1] + y0
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _stamp(density: np.ndarray, sprite: np.ndarray, cx: float, cy: float) -> None:
    """Add a sprite to a single-channel density map, centred at (cx, cy), clipped to the map."""
    height, width = density.shape
    size_y, size_x = sprite.shape
    top, left = int(round(cy)) - size_y // 2, int(round(cx)) - size_x // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size_y, height), min(left + size_x, width)
    if y1 > y0 and x1 > x0:
        density[y0:y1, x0:x1] += sprite[y0 - top:y1 - top, x0 - left:x1 - left]


# -------------------------------------------------------------------------------- composition
@dataclass(frozen=True)
class PlacedCell:
    code: str
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float


def _overlap(box: np.ndarray, others: np.ndarray) -> float:
    """Largest intersection-over-smaller-area of `box` (4,) with `others` (N, 4)."""
    if len(others) == 0:
        return 0.0
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    areas = np.minimum((box[2] - box[0]) * (box[3] - box[1]), (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]))
    return float((iw * ih / np.maximum(areas, 1.0)).max())


def _best_position(rng: np.random.Generator, candidates: np.ndarray, rx: float, ry: float,
                   taken: list[np.ndarray]) -> tuple[float, float]:
    """First candidate centre whose box does not overlap the taken boxes, else the least overlapping."""
    others = np.array(taken).reshape(-1, 4)
    scores = []
    for cx, cy in candidates:
        score = _overlap(np.array([cx - rx, cy - ry, cx + rx, cy + ry]), others)
        if score == 0.0:
            return float(cx), float(cy)
        scores.append(score)
    return tuple(float(v) for v in candidates[int(np.argmin(scores))])


def place_cells(rng: np.random.Generator, plan: ImagePlan, style: SmearStyle) -> list[PlacedCell]:
    """Centres of the planned cells: one cell near the centre (CellaVision), several spread out."""
    placed, taken = [], []
    margin = np.mean(style.box_margin)
    for cell in plan.cells:
        rx, ry = max(cell.width / 2 - margin, 4.0), max(cell.height / 2 - margin, 4.0)
        low = np.array([min(rx + 2, plan.width / 2), min(ry + 2, plan.height / 2)])
        high = np.array([max(plan.width - rx - 2, plan.width / 2), max(plan.height - ry - 2, plan.height / 2)])
        if len(plan.cells) == 1:
            centre = np.array([plan.width, plan.height]) / 2 + rng.normal(0, style.centre_jitter, 2) * plan.width
            cx, cy = np.clip(centre, low, high)
        else:
            cx, cy = _best_position(rng, rng.uniform(low, high, size=(_PLACEMENT_TRIES, 2)), rx, ry, taken)
        taken.append(np.array([cx - rx, cy - ry, cx + rx, cy + ry]))
        placed.append(PlacedCell(cell.code, float(cx), float(cy), rx, ry, float(rng.uniform(0, np.pi))))
    return placed


def place_border_cell(rng: np.random.Generator, plan: ImagePlan, cells: list[PlacedCell],
                      style: SmearStyle) -> PlacedCell:
    """A white cell whose centre sits near an edge, so that roughly 35-70 % of it is visible."""
    code = plan.border_cell
    size = draw_cell_sizes(rng, (code,), style)[0]
    rx, ry = size.width / 2, size.height / 2
    taken = [np.array([c.cx - c.rx, c.cy - c.ry, c.cx + c.rx, c.cy + c.ry]) for c in cells]
    inward = rng.uniform(-0.3, 0.4, _PLACEMENT_TRIES)
    along = rng.random(_PLACEMENT_TRIES)
    side = int(rng.integers(4))
    if side in (0, 1):  # left, right
        xs = np.where(side == 0, inward * rx, plan.width - 1 - inward * rx)
        candidates = np.stack([xs, ry + along * max(plan.height - 2 * ry, 0)], axis=1)
    else:  # top, bottom
        ys = np.where(side == 2, inward * ry, plan.height - 1 - inward * ry)
        candidates = np.stack([rx + along * max(plan.width - 2 * rx, 0), ys], axis=1)
    cx, cy = _best_position(rng, candidates, rx, ry, taken)
    return PlacedCell(code, cx, cy, rx, ry, float(rng.uniform(0, np.pi)))


def place_red_cells(rng: np.random.Generator, plan: ImagePlan, cells: list[PlacedCell], textures: Textures,
                    style: SmearStyle) -> list[tuple[int, float, float]]:
    """(sprite index, cx, cy) of the red cells; few lie under white cells.

    Red cells crowd where the smear is thick: candidates are thinned by a slow random field, which
    also keeps the coarse layout (and so the pHash) of distinct images apart.
    """
    mean_radius = np.mean(style.red_cell_radius)
    coverage = rng.uniform(*style.red_cell_coverage)
    count = int(coverage * plan.width * plan.height / (np.pi * mean_radius ** 2))
    pad = int(np.ceil(mean_radius))
    thickness = _crop(textures.thickness, rng, plan.height + 2 * pad, plan.width + 2 * pad)
    xs = rng.uniform(-mean_radius, plan.width + mean_radius, 4 * count)
    ys = rng.uniform(-mean_radius, plan.height + mean_radius, 4 * count)
    local = thickness[np.clip(ys.astype(np.intp) + pad, 0, thickness.shape[0] - 1),
                      np.clip(xs.astype(np.intp) + pad, 0, thickness.shape[1] - 1)]
    thinned = rng.random(4 * count) > np.clip(0.5 + 0.5 * style.red_cell_clustering * local, 0.05, 1.0)
    under_white = np.zeros(4 * count, dtype=bool)
    for cell in cells:
        under_white |= (((xs - cell.cx) / (cell.rx + 0.5 * mean_radius)) ** 2
                        + ((ys - cell.cy) / (cell.ry + 0.5 * mean_radius)) ** 2) < 1
    free = ~thinned & (~under_white | (rng.random(4 * count) < style.red_cell_under_white_cell))
    sprites = rng.integers(0, len(textures.red_cells), 4 * count)
    keep = np.flatnonzero(free)[:count]
    return [(int(sprites[i]), float(xs[i]), float(ys[i])) for i in keep]


def _free_red_cell(rng: np.random.Generator, plan: ImagePlan, cells: list[PlacedCell],
                   textures: Textures) -> tuple[int, float, float, Box]:
    """One extra red cell fully inside the image and apart from the white cells, with its box."""
    sprite = int(rng.integers(len(textures.red_cells)))
    half_y, half_x = (np.array(textures.red_cells[sprite].shape) - 1) / 2 - 2
    low, high = np.array([half_x + 2, half_y + 2]), np.array([plan.width - half_x - 3, plan.height - half_y - 3])
    taken = [np.array([c.cx - c.rx, c.cy - c.ry, c.cx + c.rx, c.cy + c.ry]) for c in cells]
    cx, cy = _best_position(rng, rng.uniform(low, np.maximum(high, low), size=(_PLACEMENT_TRIES, 2)),
                            half_x, half_y, taken)
    box = (int(cx - half_x) - 1, int(cy - half_y) - 1, int(np.ceil(cx + half_x)) + 1, int(np.ceil(cy + half_y)) + 1)
    return sprite, cx, cy, clip_box(box, plan.width, plan.height)


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """Integer xyxy clipped to [0, width-1] x [0, height-1]."""
    x0, y0, x1, y1 = box
    return (int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1)),
            int(np.clip(np.ceil(x1), 0, width - 1)), int(np.clip(np.ceil(y1), 0, height - 1)))


def _annotate(rng: np.random.Generator, extent: tuple[float, float, float, float], style: SmearStyle,
              width: int, height: int) -> Box:
    """The annotator's box: the outline extent plus a small random margin, clipped to the image."""
    margin = rng.uniform(*style.box_margin, size=4)
    x0, y0, x1, y1 = extent
    return clip_box((x0 - margin[0], y0 - margin[1], x1 + margin[2], y1 + margin[3]), width, height)


def render_image(plan: ImagePlan, seed: int, textures: Textures, style: SmearStyle = SMEAR_STYLE
                 ) -> tuple[np.ndarray, RenderedImage]:
    """Draw one planned smear image.

    Returns:
        The (H, W, 3) uint8 RGB image and its annotation (boxes of the planned cells, plus the
        red-cell box and border-cell box when the plan asks for them).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _RENDER_STREAM, plan.index]))
    stain = draw_stain(rng, style)
    cells = place_cells(rng, plan, style)
    border = place_border_cell(rng, plan, cells, style) if plan.border_cell else None
    white = cells + ([border] if border else [])
    red = np.zeros((plan.height, plan.width), dtype=np.float32)
    for sprite, cx, cy in place_red_cells(rng, plan, white, textures, style):
        _stamp(red, textures.red_cells[sprite], cx, cy)
    red_box = None
    if plan.free_red_cell:
        sprite, cx, cy, red_box = _free_red_cell(rng, plan, white, textures)
        _stamp(red, textures.red_cells[sprite], cx, cy)
    # Planar (3, H, W) optical density: per-channel planes keep every update a contiguous 2-D op.
    od = np.empty((3, plan.height, plan.width), dtype=np.float32)
    illumination = _crop(textures.illumination, rng, plan.height, plan.width) * np.float32(style.illumination)
    for channel in range(3):
        np.multiply(red, stain.red_cell[channel], out=od[channel])
        od[channel] += illumination
    extents = [draw_white_cell(od, rng, MORPHOLOGY[c.code], stain, textures, style, c.cx, c.cy, c.rx, c.ry, c.angle)
               for c in white]
    boxes = tuple(_annotate(rng, extent, style, plan.width, plan.height) for extent in extents[:len(cells)])
    border_box = clip_box(extents[-1], plan.width, plan.height) if border else None
    return _to_rgb(od, stain, _crop(textures.noise, rng, plan.height, plan.width)), RenderedImage(
        plan.index, plan.name, boxes, red_box, border_box)


def _to_rgb(od: np.ndarray, stain: Stain, noise: np.ndarray) -> np.ndarray:
    """Planar optical density -> interleaved uint8 RGB under the background light, plus noise."""
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= stain.background[:, None, None]
    od += noise
    return cv2.merge([cv2.convertScaleAbs(plane) for plane in od])  # rounds and saturates to 0..255


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- worker plumbing
_WORKER: dict[str, object] = {}


def _init_worker(seed: int, images_dir: str, jpeg_quality: int, style: SmearStyle, single_thread: bool) -> None:
    if single_thread:
        cv2.setNumThreads(1)  # one process per core already
    _WORKER.update(seed=seed, images_dir=Path(images_dir), quality=jpeg_quality, style=style,
                   textures=build_textures(seed, style))


def _render_and_write(plan: ImagePlan) -> RenderedImage:
    rgb, rendered = render_image(plan, _WORKER["seed"], _WORKER["textures"], _WORKER["style"])
    (_WORKER["images_dir"] / plan.name).write_bytes(encode_jpeg(rgb, _WORKER["quality"]))
    return rendered


def _render_all(plans: list[ImagePlan], *, seed: int, images_dir: Path, jpeg_quality: int, style: SmearStyle,
                workers: int, progress: bool) -> list[RenderedImage]:
    bar = tqdm(total=len(plans), desc="synthesize", unit="img", disable=not progress)
    init_args = (seed, str(images_dir), jpeg_quality, style, workers > 1)
    results = []
    if workers <= 1:
        _init_worker(*init_args)
        for plan in plans:
            results.append(_render_and_write(plan))
            bar.update()
        _WORKER.clear()  # drop the textures held for this run
    else:
        # NOTE: "spawn", not fork: a forked child inherits OpenCV's thread pool in a broken state and
        # can deadlock in its first parallel call when the parent has already used OpenCV.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            for rendered in pool.imap(_render_and_write, plans, chunksize=16):
                results.append(rendered)
                bar.update()
    bar.close()
    return results


# ------------------------------------------------------------------------------------ defects
@dataclass
class BoxRow:
    """One annotation row before the table is ordered; `key` survives re-ordering."""

    key: int
    name: str
    x1: int
    y1: int
    x2: int
    y2: int
    label: str


@dataclass
class Dataset:
    """Everything the writer needs, built up by the defect injectors."""

    images_dir: Path
    sizes: dict[str, tuple[int, int]]  # name -> (width, height)
    train: list[BoxRow] = field(default_factory=list)
    test: list[BoxRow] = field(default_factory=list)
    defects: list[dict[str, object]] = field(default_factory=list)  # kind, name, source, row_key, detail
    train_by_name: dict[str, list[BoxRow]] = field(default_factory=dict)
    next_key: int = 0

    def add_row(self, split: str, name: str, box: Box, label: str) -> BoxRow:
        row = BoxRow(self.next_key, name, *box, label)
        self.next_key += 1
        if split == "train":
            self.train.append(row)
            self.train_by_name.setdefault(name, []).append(row)
        else:
            self.test.append(row)
        return row

    def record(self, kind: str, name: str, detail: str, source: str = "", row: BoxRow | None = None) -> None:
        self.defects.append({"kind": kind, "name": name, "source": source,
                             "row_key": row.key if row else -1, "detail": detail})

    def rows_of(self, name: str) -> list[BoxRow]:
        """Train rows of an image (a copy of the list)."""
        return list(self.train_by_name.get(name, []))


def _other_class(rng: np.random.Generator, code: str) -> str:
    """A different class, usually one a careless annotator would confuse with `code`."""
    if rng.random() < CONFUSABLE_LABEL_SHARE:
        return str(rng.choice(CONFUSABLE[code]))
    return str(rng.choice([c for c in CLASSES if c != code]))


def inject_box_defects(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                       rendered: dict[str, RenderedImage]) -> None:
    """out_of_image_box, oversized_box, wrong_label, red_cell_box, unannotated_border_cell."""
    for name in targets["out_of_image_box"]:
        rows = data.rows_of(name)
        row = rows[int(rng.integers(len(rows)))]
        width, height = data.sizes[name]
        coordinate = str(rng.choice(list(OUT_OF_IMAGE_COORDINATE_P), p=list(OUT_OF_IMAGE_COORDINATE_P.values())))
        beyond = int(rng.integers(OUT_OF_IMAGE_PX[0], OUT_OF_IMAGE_PX[1] + 1))
        value = -beyond if coordinate in ("x1", "y1") else (width if coordinate == "x2" else height) + beyond
        data.record("out_of_image_box", name, f"{coordinate} {getattr(row, coordinate)} -> {value} (image {width}x{height})",
                    row=row)
        setattr(row, coordinate, value)
    for name in targets["oversized_box"]:
        row = data.rows_of(name)[0]
        width, height = data.sizes[name]
        scale = rng.uniform(*OVERSIZE_SCALE)
        cx, cy, hw, hh = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2, (row.x2 - row.x1) / 2, (row.y2 - row.y1) / 2
        new = clip_box((cx - scale * hw, cy - scale * hh, cx + scale * hw, cy + scale * hh), width, height)
        data.record("oversized_box", name, f"({row.x1},{row.y1},{row.x2},{row.y2}) -> {new}, scale {scale:.2f}",
                    row=row)
        row.x1, row.y1, row.x2, row.y2 = new
    for name in targets["wrong_label"]:
        row = data.rows_of(name)[0]
        new_label = _other_class(rng, row.label)
        data.record("wrong_label", name, f"{row.label} -> {new_label}", row=row)
        row.label = new_label
    for name in targets["red_cell_box"]:
        label = data.rows_of(name)[0].label
        row = data.add_row("train", name, rendered[name].red_cell_box, label)
        data.record("red_cell_box", name, f"red cell {rendered[name].red_cell_box} labelled {label}", row=row)
    for name in targets["unannotated_border_cell"]:
        data.record("unannotated_border_cell", name, f"visible box {rendered[name].border_cell_box} not annotated")


def _near_duplicate(source: Path, target: Path, variant: str, rng: np.random.Generator, jpeg_quality: int
                    ) -> tuple[str, object]:
    """Write a near copy of `source`; return its detail and a function mapping source boxes."""
    image = Image.open(source).convert("RGB")
    width, height = image.size
    if variant == "reencode":
        quality = max(1, jpeg_quality - int(rng.integers(NEAR_QUALITY_DROP[0], NEAR_QUALITY_DROP[1] + 1)))
        image.save(target, format="JPEG", quality=quality)
        return f"reencode quality {jpeg_quality} -> {quality}", lambda box: box
    if variant == "resize":
        new_w, new_h = (side + int(rng.choice([-1, 1])) * int(rng.integers(NEAR_RESIZE_PX[0], NEAR_RESIZE_PX[1] + 1))
                        for side in (width, height))
        image.resize((new_w, new_h), Image.Resampling.BILINEAR).save(target, format="JPEG", quality=jpeg_quality)
        sx, sy = new_w / width, new_h / height
        return (f"resize {width}x{height} -> {new_w}x{new_h}",
                lambda box: clip_box((box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), new_w, new_h))
    left, top, right, bottom = (int(v) for v in rng.integers(0, NEAR_CROP_PX + 1, size=4))
    left = max(left, 1)
    image.crop((left, top, width - right, height - bottom)).save(target, format="JPEG", quality=jpeg_quality)
    new_w, new_h = width - left - right, height - top - bottom
    return (f"crop left {left} top {top} right {right} bottom {bottom}",
            lambda box: clip_box((box[0] - left, box[1] - top, box[2] - left, box[3] - top), new_w, new_h))


def phash_distance(first: Path, second: Path) -> int:
    """Hamming distance of the 64-bit imagehash pHashes of two image files."""
    with Image.open(first) as a, Image.open(second) as b:
        return int(imagehash.phash(a.convert("RGB")) - imagehash.phash(b.convert("RGB")))


def inject_duplicates(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                      copy_names: dict[str, list[str]], jpeg_quality: int, near_max_distance: int) -> None:
    """exact_duplicate, conflicting_duplicate, near_duplicate (train) and train_test_duplicate (test)."""
    for kind in ("exact_duplicate", "conflicting_duplicate", "train_test_duplicate"):
        for source, copy in zip(targets[kind], copy_names[kind]):
            shutil.copyfile(data.images_dir / source, data.images_dir / copy)
            data.sizes[copy] = data.sizes[source]
            split = "test" if kind == "train_test_duplicate" else "train"
            changes = []
            for row in data.rows_of(source):
                label = _other_class(rng, row.label) if kind == "conflicting_duplicate" else row.label
                changes.append(f"{row.label} -> {label}")
                data.add_row(split, copy, (row.x1, row.y1, row.x2, row.y2), label)
            detail = "byte-identical copy" + (f", labels {'; '.join(changes)}" if kind == "conflicting_duplicate" else "")
            data.record(kind, copy, detail, source=source)
    first_variant = int(rng.integers(len(NEAR_DUPLICATE_VARIANTS)))
    for i, (source, copy) in enumerate(zip(targets["near_duplicate"], copy_names["near_duplicate"])):
        variant = NEAR_DUPLICATE_VARIANTS[(first_variant + i) % len(NEAR_DUPLICATE_VARIANTS)]
        source_path, copy_path = data.images_dir / source, data.images_dir / copy
        detail, mapping = _near_duplicate(source_path, copy_path, variant, rng, jpeg_quality)
        distance = phash_distance(source_path, copy_path)
        if distance > near_max_distance:  # rare: fall back to the gentlest change
            detail, mapping = _near_duplicate(source_path, copy_path, "reencode", rng, jpeg_quality)
            distance = phash_distance(source_path, copy_path)
        with Image.open(copy_path) as image:
            data.sizes[copy] = image.size
        for row in data.rows_of(source):
            data.add_row("train", copy, mapping((row.x1, row.y1, row.x2, row.y2)), row.label)
        data.record("near_duplicate", copy, f"{detail}; phash distance {distance}", source=source)


def inject_file_defects(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                        jpeg_quality: int) -> None:
    """truncated_jpeg, unreadable_file, greyscale_image: rewrite base train files in place."""
    for name in targets["truncated_jpeg"]:
        path = data.images_dir / name
        payload = path.read_bytes()
        kept = int(len(payload) * rng.uniform(*TRUNCATE_KEEP))
        path.write_bytes(payload[:kept])
        data.record("truncated_jpeg", name, f"kept {kept} of {len(payload)} bytes")
    for name in targets["unreadable_file"]:
        (data.images_dir / name).write_bytes(UNREADABLE_BYTES)
        data.record("unreadable_file", name, "HTML error page instead of JPEG data")
    for name in targets["greyscale_image"]:
        path = data.images_dir / name
        with Image.open(path) as image:
            grey = image.convert("L")
        grey.save(path, format="JPEG", quality=jpeg_quality)
        data.record("greyscale_image", name, "re-encoded as single-channel (mode L) JPEG")


# ------------------------------------------------------------------------------------- tables
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


def write_tables(data: Dataset, out_dir: Path, rng: np.random.Generator) -> dict[str, int]:
    """Write train.csv, test.csv, test_truth.csv and defects.parquet; return adjacency counts."""
    train = _box_frame(data.train)
    train_order, train_adjacent = spread_rows(train["NAME"].to_numpy(), rng)
    train = train.iloc[train_order].reset_index(drop=True)
    train.drop(columns="key").to_csv(out_dir / "train.csv", index=False)
    test = _box_frame(data.test)
    test_order, test_adjacent = spread_rows(test["NAME"].to_numpy(), rng)
    test = test.iloc[test_order].reset_index(drop=True)
    id_space = len(train) + len(test)
    test.insert(0, "trustii_id", rng.choice(id_space, size=len(test), replace=False).astype(np.int64) + 1)
    test[["trustii_id", "NAME"]].to_csv(out_dir / "test.csv", index=False)
    test[["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]].to_csv(out_dir / "test_truth.csv", index=False)
    row_of_key = dict(zip(train["key"].tolist(), range(len(train))))
    defects = pd.DataFrame({
        "kind": pd.Series([d["kind"] for d in data.defects], dtype="str"),
        "name": pd.Series([d["name"] for d in data.defects], dtype="str"),
        "source": pd.Series([d["source"] for d in data.defects], dtype="str"),
        "row": pd.Series([row_of_key.get(d["row_key"], -1) for d in data.defects], dtype="int64"),
        "detail": pd.Series([d["detail"] for d in data.defects], dtype="str"),
    })
    tables.write_table(defects, out_dir / "defects.parquet", tables.DEFECTS)
    return {"adjacent_train_rows": train_adjacent, "adjacent_test_rows": test_adjacent}


# ---------------------------------------------------------------------------------- entry point
def _check_arguments(out_dir: Path, n_images: int, test_fraction: float, jpeg_quality: int,
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
    images_dir = out_dir / "images"
    if images_dir.exists() and any(images_dir.iterdir()):
        raise FileExistsError(f"synthesize: {images_dir} is not empty; remove it first (files would mix)")


def synthesize(out_dir: str | Path, *, n_images: int, test_fraction: float, seed: int, jpeg_quality: int,
               defects: dict[str, int], workers: int = 1, progress: bool = True,
               near_duplicate_max_distance: int = 4, style: SmearStyle = SMEAR_STYLE) -> dict[str, object]:
    """Generate a synthetic dataset in the challenge layout under `out_dir`.

    Args:
        out_dir: folder to create; receives images/, train.csv, test.csv, test_truth.csv, defects.parquet.
        n_images: image files written in total (train + test, including duplicate copies).
        test_fraction: share of the base (non-copy) images that go to test, in [0, 1).
        seed: the only source of randomness; the same seed gives byte-identical files.
        jpeg_quality: Pillow JPEG quality of the images (1-95).
        defects: count per kind of DEFECT_KINDS (missing kinds: 0).
        workers: rendering processes (1 renders in this process). Workers are started with the
            "spawn" method, which re-imports the caller's main module: a calling script (e.g. a
            Snakemake `script:`) must guard its top-level call with `if __name__ == "__main__":`.
        progress: show a tqdm progress bar.
        near_duplicate_max_distance: largest pHash Hamming distance a near duplicate may have from its
            source; a variant that lands further away is replaced by a JPEG re-encode.
        style: smear colours and drawing constants (see leukoflow.synthetic.morphology.SmearStyle).

    Returns:
        JSON-serialisable summary: counts of images, boxes, rows and defects, timing.

    Raises:
        ValueError: unknown defect kind, bad ranges, or too few base train images for the defects.
        FileExistsError: out_dir/images already holds files.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_arguments(out_dir, n_images, test_fraction, jpeg_quality, defects)
    defects = {kind: int(defects.get(kind, 0)) for kind in DEFECT_KINDS}
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, _PLAN_STREAM]))
    n_base = n_images - sum(defects[kind] for kind in COPY_KINDS)
    n_test = int(round(test_fraction * n_base))
    names = draw_names(plan_rng, n_images)
    plans, target_indices = plan_images(n_base=n_base, n_test=n_test, names=names, defects=defects,
                                        rng=plan_rng, style=style)
    rendered = _render_all(plans, seed=seed, images_dir=images_dir, jpeg_quality=jpeg_quality, style=style,
                           workers=max(1, workers), progress=progress)
    data = Dataset(images_dir, {p.name: (p.width, p.height) for p in plans})
    for plan, image in zip(plans, rendered):
        for cell, box in zip(plan.cells, image.boxes):
            data.add_row(plan.split, plan.name, box, cell.code)
    targets = {kind: [names[i] for i in indices] for kind, indices in target_indices.items()}
    copy_iter = iter(names[n_base:])
    copy_names = {kind: [next(copy_iter) for _ in range(defects[kind])] for kind in COPY_KINDS}
    defect_rng = np.random.default_rng(np.random.SeedSequence([seed, _DEFECT_STREAM]))
    by_name = {image.name: image for image in rendered}
    inject_box_defects(data, defect_rng, targets, by_name)
    inject_duplicates(data, defect_rng, targets, copy_names, jpeg_quality, near_duplicate_max_distance)
    inject_file_defects(data, defect_rng, targets, jpeg_quality)
    adjacency = write_tables(data, out_dir, defect_rng)
    seconds = time.perf_counter() - started
    n_test_images = n_test + defects["train_test_duplicate"]
    return {
        "n_images": n_images, "n_base_images": n_base, "n_train_images": n_images - n_test_images,
        "n_test_images": n_test_images, "n_train_boxes": len(data.train), "n_test_rows": len(data.test),
        "defects": {kind: sum(d["kind"] == kind for d in data.defects) for kind in DEFECT_KINDS},
        **adjacency, "seconds": round(seconds, 3), "images_per_second": round(n_images / seconds, 1),
    }
