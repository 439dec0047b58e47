"""Composing and encoding one planned image (cell placement, red cells, boxes) and the worker pool
that renders all of them."""

from __future__ import annotations

import io
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from leukoflow.synthetic.cells import Stain, draw_stain, draw_white_cell, stamp
from leukoflow.synthetic.morphology import MORPHOLOGY, SMEAR_STYLE, SmearStyle
from leukoflow.synthetic.plan import RENDER_STREAM, Box, ImagePlan, RenderedImage, draw_cell_sizes
from leukoflow.synthetic.textures import Textures, build_textures, crop_field

_PLACEMENT_TRIES = 40


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
    thickness = crop_field(textures.thickness, rng, plan.height + 2 * pad, plan.width + 2 * pad)
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
    rng = np.random.default_rng(np.random.SeedSequence([seed, RENDER_STREAM, plan.index]))
    stain = draw_stain(rng, style)
    cells = place_cells(rng, plan, style)
    border = place_border_cell(rng, plan, cells, style) if plan.border_cell else None
    white = cells + ([border] if border else [])
    red = np.zeros((plan.height, plan.width), dtype=np.float32)
    for sprite, cx, cy in place_red_cells(rng, plan, white, textures, style):
        stamp(red, textures.red_cells[sprite], cx, cy)
    red_box = None
    if plan.free_red_cell:
        sprite, cx, cy, red_box = _free_red_cell(rng, plan, white, textures)
        stamp(red, textures.red_cells[sprite], cx, cy)
    # Planar (3, H, W) optical density: per-channel planes keep every update a contiguous 2-D op.
    od = np.empty((3, plan.height, plan.width), dtype=np.float32)
    illumination = crop_field(textures.illumination, rng, plan.height, plan.width) * np.float32(style.illumination)
    for channel in range(3):
        np.multiply(red, stain.red_cell[channel], out=od[channel])
        od[channel] += illumination
    extents = [draw_white_cell(od, rng, MORPHOLOGY[c.code], stain, textures, style, c.cx, c.cy, c.rx, c.ry, c.angle)
               for c in white]
    boxes = tuple(_annotate(rng, extent, style, plan.width, plan.height) for extent in extents[:len(cells)])
    border_box = clip_box(extents[-1], plan.width, plan.height) if border else None
    return _to_rgb(od, stain, crop_field(textures.noise, rng, plan.height, plan.width)), RenderedImage(
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


def render_all(plans: list[ImagePlan], *, seed: int, images_dir: Path, jpeg_quality: int, style: SmearStyle,
               workers: int) -> list[RenderedImage]:
    bar = tqdm(total=len(plans), desc="synthesize", unit="img", disable=None)  # no bar in log files
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

