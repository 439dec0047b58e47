"""Candidate pairs bounded per image: each image is paired only with its nearest thumbnail layouts.

A fixed pHash radius makes the candidate count grow with the square of the data: at `max_distance`
12, 10,000 synthetic smears gave 7,144 candidate pairs, 69,168 gave 335,190 and 300,000 gave about
5.9 million, nearly all of them distinct smears that the thumbnail check then rejects
(BENCHMARKS.md, "Dedup at scale"). What separates a retake from a distinct smear with a close hash
is where its cells lie, which the thumbnail resolves. So the search asks first which images look
alike at all: each thumbnail is box-reduced to an 8x8 layout (zero mean, unit norm, so brightness
and contrast drop out; the reduction absorbs a move of a thumbnail pixel or two), the layouts are
projected on their LAYOUT_DIMS principal axes (scikit-learn PCA), and a k-d tree (scipy cKDTree)
gives every image its `neighbours` nearest layouts. A candidate is such a pair within the pHash
radius. Work is n log n, not n^2; memory is the layouts (256 B per image), the tree, and one block
of queries at a time, the pairs kept only once they pass the pHash radius.

What it may miss is a retake that more than `neighbours` other images resemble more closely; the
synthetic retakes and hard negatives measure it (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA

from leukoflow.curation.hash_search import ordered_unique_pairs

if TYPE_CHECKING:
    from leukoflow.ingest.thumbnails import ThumbnailArray

LAYOUT_SIDE = 8
# Measured at 69k synthetic images, 16 neighbours: 8 axes kept every shifted retake (recall 1.0),
# 6 axes lost 8.5 % of them, 10 axes found the same pairs at three times the tree's query time.
LAYOUT_DIMS = 8
SHORTLIST_PER_NEIGHBOUR = 8
TREE_EPS = 1.0
_ROWS_PER_BLOCK = 2048  # a block's float copy: 4 KB per row
_QUERIES_PER_BLOCK = 512  # a block gathers its shortlists' layouts: 33 KB per query


def layouts(thumbnails: ThumbnailArray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), LAYOUT_SIDE^2) float32 box-reduced thumbnails at `rows`, each with zero mean and
    unit norm (a flat one: zeros)."""
    side = thumbnails.shape[-1]
    if side % LAYOUT_SIDE:
        raise ValueError(f"thumbnail side {side} is not a multiple of the layout side {LAYOUT_SIDE}")
    step = side // LAYOUT_SIDE
    reduced = np.empty((len(rows), LAYOUT_SIDE * LAYOUT_SIDE), np.float32)
    for start in range(0, len(rows), _ROWS_PER_BLOCK):  # never a float copy of all thumbnails
        block = thumbnails[rows[start:start + _ROWS_PER_BLOCK]].reshape(-1, LAYOUT_SIDE, step, LAYOUT_SIDE, step)
        reduced[start:start + len(block)] = block.mean(axis=(2, 4), dtype=np.float32).reshape(len(block), -1)
    reduced -= reduced.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    np.divide(reduced, norms, out=reduced, where=norms > 1e-6)
    reduced[norms[:, 0] <= 1e-6] = 0.0
    return reduced


def _all_pairs(n: int) -> np.ndarray:
    first, second = np.triu_indices(n, k=1)
    return np.stack([first, second], axis=1).astype(np.int64)


def _nearest_layouts(vectors: np.ndarray, neighbours: int, workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (block, neighbours) positions) per block of layouts: each layout's nearest others by
    full cosine, among a shortlist that a k-d tree over the layouts' principal axes draws
    (approximate within TREE_EPS). In blocks: per image, the shortlist is 1 KB, its layouts 33 KB."""
    n = len(vectors)
    shortlist = min(n, SHORTLIST_PER_NEIGHBOUR * neighbours + 1)
    # From the 64x64 covariance (no n x 64 SVD factors); deterministic, and the axes' signs change no distance.
    projected = PCA(min(LAYOUT_DIMS, n), svd_solver="covariance_eigh").fit_transform(vectors)
    tree = cKDTree(projected)
    for start in range(0, n, _QUERIES_PER_BLOCK):
        stop = min(n, start + _QUERIES_PER_BLOCK)
        _, listed = tree.query(projected[start:stop], k=shortlist, eps=TREE_EPS, workers=workers)
        scores = np.einsum("bd,bkd->bk", vectors[start:stop], vectors[listed])
        scores[listed == np.arange(start, stop)[:, None]] = -np.inf
        best = np.argpartition(-scores, neighbours - 1, axis=1)[:, :neighbours]
        yield start, np.take_along_axis(listed, best, axis=1)


PairFilter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def neighbour_pairs(thumbnails: ThumbnailArray, rows: np.ndarray, neighbours: int, *, workers: int = 1,
                    keep: PairFilter | None = None) -> np.ndarray:
    """Sorted unique pairs (i < j) of positions in `rows` where the thumbnail at rows[j] is among the
    `neighbours` nearest layouts of the one at rows[i], or the other way round; with `keep`, only
    the pairs (a, b) where keep(a, b) is true, filtered block by block (never n x `neighbours` pairs
    in memory).

    With `neighbours` >= len(rows) - 1 every pair is returned, so small sets are searched exhaustively.
    """
    if neighbours < 1:
        raise ValueError(f"dedup neighbours must be at least 1, got {neighbours}")
    n = len(rows)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if neighbours >= n - 1:
        pairs = _all_pairs(n)
        return pairs if keep is None else pairs[keep(pairs[:, 0], pairs[:, 1])]
    first, second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, nearest in _nearest_layouts(layouts(thumbnails, rows), neighbours, workers):
        a = np.repeat(np.arange(start, start + len(nearest), dtype=np.int64), neighbours)
        b = nearest.ravel().astype(np.int64)
        kept = slice(None) if keep is None else keep(a, b)
        first.append(a[kept])
        second.append(b[kept])
    return ordered_unique_pairs(np.concatenate(first), np.concatenate(second), n)
