"""Drawing one white cell into a planar optical-density canvas: stain, outline, nucleus, granules."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from leukoflow.synthetic.morphology import CHROMATIN_TEXTURES, GRANULE_STYLES, Morphology, SmearStyle
from leukoflow.synthetic.textures import Textures, crop_field

_POLYGON_SHIFT = 3  # cv2 fixed-point bits: outlines are placed to 1/8 px


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
    texture = crop_field(textures.chromatin[texture_name], rng, *shape_hw)
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


def stamp(density: np.ndarray, sprite: np.ndarray, cx: float, cy: float) -> None:
    """Add a sprite to a single-channel density map, centred at (cx, cy), clipped to the map."""
    height, width = density.shape
    size_y, size_x = sprite.shape
    top, left = int(round(cy)) - size_y // 2, int(round(cx)) - size_x // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size_y, height), min(left + size_x, width)
    if y1 > y0 and x1 > x0:
        density[y0:y1, x0:x1] += sprite[y0 - top:y1 - top, x0 - left:x1 - left]

