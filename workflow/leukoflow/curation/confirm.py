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

import cv2
import numpy as np

MAX_SHIFT = 2  # thumbnail px (~6 % of the side) tried in each direction
# Measured on synthetic retakes and hard negatives (BENCHMARKS.md): 0.7 px raised the lowest score
# of a moved copy from 0.90 to 0.96 while the highest distinct pair stayed below 0.90.
SMOOTHING_SIGMA = 0.7  # thumbnail px
_PAIRS_PER_BLOCK = 4096  # bounds memory: a block holds 2 x pairs x side^2 float32


def _shift_slices(shift: int, side: int) -> tuple[slice, slice]:
    """Slices of the first and second thumbnail that overlap when the second moves by `shift`."""
    return slice(max(shift, 0), side + min(shift, 0)), slice(max(-shift, 0), side + min(-shift, 0))


def _standardised(values: np.ndarray) -> np.ndarray:
    """Rows of a (pairs, k) block with zero mean and unit variance (flat rows stay 0)."""
    centred = values - values.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred * centred).mean(axis=1, keepdims=True))
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-6)


def _smoothed(thumbnails: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Copy of the thumbnails with the ones in `used` smoothed (the others are never read)."""
    smoothed = thumbnails.copy()
    for index in used.tolist():
        smoothed[index] = cv2.GaussianBlur(thumbnails[index], (0, 0), SMOOTHING_SIGMA, borderType=cv2.BORDER_REFLECT)
    return smoothed


def similarity(thumbnails: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Best normalised cross-correlation over shifts of +-MAX_SHIFT px, per pair (first[k], second[k]).

    Args:
        thumbnails: (n, side, side) float32 grey thumbnails.
        first, second: index arrays of equal length, the candidate pairs.

    Returns:
        (pairs,) float64 in [-1, 1]; 1 means identical up to brightness/contrast.
    """
    side = thumbnails.shape[-1]
    best = np.full(len(first), -1.0)
    thumbnails = _smoothed(thumbnails, np.union1d(first, second))
    for start in range(0, len(first), _PAIRS_PER_BLOCK):
        a = thumbnails[first[start:start + _PAIRS_PER_BLOCK]]
        b = thumbnails[second[start:start + _PAIRS_PER_BLOCK]]
        block = best[start:start + _PAIRS_PER_BLOCK]
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            rows_a, rows_b = _shift_slices(dy, side)
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                cols_a, cols_b = _shift_slices(dx, side)
                left = _standardised(a[:, rows_a, cols_a].reshape(len(a), -1))
                right = _standardised(b[:, rows_b, cols_b].reshape(len(b), -1))
                np.maximum(block, (left * right).mean(axis=1), out=block)
    return best
