"""A small grey thumbnail of every image, computed from ingest's one decode (for curation).

The duplicate search confirms each perceptual-hash candidate pair by comparing the two images
themselves (`leukoflow.curation.confirm`); storing a THUMBNAIL_SIDE x THUMBNAIL_SIDE grey
thumbnail per image in images.parquet lets it do so without decoding any image again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from leukoflow.images import ReducedGrey

THUMBNAIL_SIDE = 32  # 1 KiB per image; at ~360 px smears one thumbnail px is ~11 image px


def thumbnail(grey: ReducedGrey) -> str:
    """Hex string of the THUMBNAIL_SIDE^2 grey levels of an image (box-filtered, row-major).

    Ingest passes its `leukoflow.images.reduced_grey`, already box-reduced by whole factors when
    `ingest.phash_reducing_gap` is set: the same box filter up to the reduction's rounding (at most
    one grey level).
    """
    return grey.resized(THUMBNAIL_SIDE, Image.Resampling.BOX).tobytes().hex()


def thumbnails_to_array(values: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
    """(n, side, side) uint8 grey levels from thumbnail hex strings (those at `rows`, in that order,
    when given); raises naming the first bad one by its row.

    Decoded row by row into one uint8 array: at 300k images, joining the strings and widening
    them to float32 held about 1.8 GB more than these 300 MB (BENCHMARKS.md, "Dedup memory").
    """
    size = THUMBNAIL_SIDE * THUMBNAIL_SIDE
    rows = range(len(values)) if rows is None else rows
    levels = np.empty((len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE), np.uint8)
    for index, row in enumerate(rows):
        value = values[row]
        if len(value) != 2 * size:
            raise ValueError(f"images table, row {row}: thumbnail has {len(value) // 2} bytes, expected {size}")
        levels[index] = np.frombuffer(bytes.fromhex(value), np.uint8).reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    return levels
