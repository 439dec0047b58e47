"""The second, independent stage of the near-duplicate search: do two candidate images look alike?

A perceptual-hash candidate pair is confirmed when the normalised cross-correlation of the two
grey thumbnails that ingest stored (`leukoflow.ingest.thumbnails`) reaches `dedup.min_similarity`
at the best small relative shift. Standardising each overlap (zero mean, unit variance) makes the
score blind to brightness, contrast and slight stain changes; the shift search absorbs a moved
field of view, and a slight Gaussian smoothing of the thumbnails the part of the move that falls
between two thumbnail pixels; the box-filtered thumbnail absorbs re-encoding and refocus blur. Distinct smears
whose coarse layout happens to give close hashes differ in where their red cells lie, which the
thumbnail still resolves, so they score low.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from leukoflow.ingest.thumbnails import ThumbnailArray

MAX_SHIFT = 2  # thumbnail px (~6 % of the side) tried in each direction
# Measured on synthetic retakes and hard negatives (BENCHMARKS.md): 0.7 px raised the lowest score
# of a moved copy from 0.90 to 0.96 while the highest distinct pair stayed below 0.90.
SMOOTHING_SIGMA = 0.7  # thumbnail px
_PAIRS_PER_BLOCK = 256  # bounds memory: a block holds 2 x pairs x side^2 float64 and their integrals, 56 KB per pair
_FLAT = 1e-6  # a window whose variance per pixel is below this (squared grey levels) counts as flat: score 0


def _smoothed(thumbnails: ThumbnailArray, rows: np.ndarray) -> np.ndarray:
    """The thumbnails at `rows`, each smoothed with SMOOTHING_SIGMA, as float64 (whatever the input's type).

    Smoothed per block of pairs rather than once per image: a smoothed copy of every image that
    some candidate touches was 4 KB per image, and the bounded search touches most of them."""
    levels = thumbnails[rows]
    smoothed = np.empty(levels.shape, np.float64)
    for index, level in enumerate(levels):
        smoothed[index] = cv2.GaussianBlur(level.astype(np.float32), (0, 0), SMOOTHING_SIGMA,
                                           borderType=cv2.BORDER_REFLECT)
    return smoothed


def _window_sums(integral: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Per thumbnail, the sum over one rectangle, from (n, side+1, side+1) zero-padded integral images."""
    return (integral[:, rows.stop, cols.stop] - integral[:, rows.start, cols.stop]
            - integral[:, rows.stop, cols.start] + integral[:, rows.start, cols.start])


def _integrals(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded integral images of the values and of their squares, float64."""
    padded = np.zeros((len(block), block.shape[1] + 1, block.shape[2] + 1))
    squares = padded.copy()
    padded[:, 1:, 1:] = block.cumsum(axis=1).cumsum(axis=2)
    squares[:, 1:, 1:] = (block * block).cumsum(axis=1).cumsum(axis=2)
    return padded, squares


def _overlap(shift: int, side: int) -> tuple[slice, slice]:
    """Slices of the first and second thumbnail that overlap when the second moves by `shift`."""
    return slice(max(shift, 0), side + min(shift, 0)), slice(max(-shift, 0), side + min(-shift, 0))


def similarity(thumbnails: ThumbnailArray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Best normalised cross-correlation over shifts of +-MAX_SHIFT px, per pair (first[k], second[k]).

    For each shift the two overlapping windows are compared, each standardised on its own (zero
    mean, unit variance); window means and variances come from integral images.

    Args:
        thumbnails: (n, side, side) grey thumbnails (uint8 as ingest stores them, or float), or a
            `ThumbnailFile` of them.
        first, second: index arrays of equal length, the candidate pairs.

    Returns:
        (pairs,) float64 in [-1, 1]; 1 means identical up to brightness/contrast.
    """
    side = thumbnails.shape[-1]
    best = np.full(len(first), -1.0)
    for start in range(0, len(first), _PAIRS_PER_BLOCK):
        a = _smoothed(thumbnails, first[start:start + _PAIRS_PER_BLOCK])
        b = _smoothed(thumbnails, second[start:start + _PAIRS_PER_BLOCK])
        (sum_a, square_a), (sum_b, square_b) = _integrals(a), _integrals(b)
        block = best[start:start + _PAIRS_PER_BLOCK]
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            rows_a, rows_b = _overlap(dy, side)
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                cols_a, cols_b = _overlap(dx, side)
                count = (rows_a.stop - rows_a.start) * (cols_a.stop - cols_a.start)
                total_a, total_b = _window_sums(sum_a, rows_a, cols_a), _window_sums(sum_b, rows_b, cols_b)
                products = np.einsum("kij,kij->k", a[:, rows_a, cols_a], b[:, rows_b, cols_b])
                covariance = products - total_a * total_b / count
                variance_a = _window_sums(square_a, rows_a, cols_a) - total_a ** 2 / count
                variance_b = _window_sums(square_b, rows_b, cols_b) - total_b ** 2 / count
                scale = np.sqrt(np.clip(variance_a, 0, None) * np.clip(variance_b, 0, None))
                score = np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > _FLAT * count)
                np.maximum(block, score, out=block)
    return np.clip(best, -1.0, 1.0)
