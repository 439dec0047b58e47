"""Noise fields and red-cell sprites shared by every image of one seed (built once per process)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from leukoflow.synthetic.morphology import SMEAR_STYLE, SmearStyle
from leukoflow.synthetic.plan import TEXTURE_STREAM

_TEXTURE_SIDE = 512
_FIELD_SIDE = 1024
_RED_CELL_SPRITES = 48


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
    rng = np.random.default_rng(np.random.SeedSequence([seed, TEXTURE_STREAM]))

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


def crop_field(texture: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random window over the last two axes of a texture field (tiled when the field is smaller)."""
    if height > texture.shape[-2] or width > texture.shape[-1]:
        reps = (1,) * (texture.ndim - 2) + (height // texture.shape[-2] + 1, width // texture.shape[-1] + 1)
        texture = np.tile(texture, reps)
    y = int(rng.integers(0, texture.shape[-2] - height + 1))
    x = int(rng.integers(0, texture.shape[-1] - width + 1))
    return texture[..., y:y + height, x:x + width]

