"""A small grey thumbnail of every image, computed from ingest's one decode (for curation).

The duplicate search confirms each perceptual-hash candidate pair by comparing the two images
themselves (`leukoflow.curation.confirm`); storing a THUMBNAIL_SIDE x THUMBNAIL_SIDE grey
thumbnail per image in images.parquet lets it do so without decoding any image again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
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


def thumbnails_to_array(values: Sequence[str], rows: Sequence[int] | None = None, first_row: int = 0) -> np.ndarray:
    """(n, side, side) uint8 grey levels from thumbnail hex strings (those at `rows`, in that order,
    when given); raises naming the first bad one by its row (`first_row` + its position in `values`).

    Decoded row by row into one uint8 array: at 300k images, joining the strings and widening
    them to float32 held about 1.8 GB more than these 300 MB (BENCHMARKS.md, "Dedup memory").
    """
    size = THUMBNAIL_SIDE * THUMBNAIL_SIDE
    rows = range(len(values)) if rows is None else rows
    levels = np.empty((len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE), np.uint8)
    for index, row in enumerate(rows):
        value = values[row]
        if not isinstance(value, str) or len(value) != 2 * size:
            found = f"{len(value) // 2} bytes" if isinstance(value, str) else "no value"
            raise ValueError(f"images table, row {first_row + row}: thumbnail has {found}, expected {size} bytes")
        levels[index] = np.frombuffer(bytes.fromhex(value), np.uint8).reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    return levels


_BATCH_ROWS = 8192


def read_thumbnails(path: str | Path, rows: np.ndarray) -> np.ndarray:
    """(len(rows), side, side) uint8 thumbnails of the images table at `path`, those at row
    positions `rows` in that order, read one record batch at a time: the hex text of all thumbnails
    (2 KB per image, 1.3 GB as a pandas column at 300k images) is never held (BENCHMARKS.md)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    levels = np.empty((len(rows), THUMBNAIL_SIDE, THUMBNAIL_SIDE), np.uint8)
    start = 0
    # pre_buffer off: buffered column chunks kept about 100 MB of Arrow memory at 69k images
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=_BATCH_ROWS, columns=["thumbnail"]):
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            values = batch.column(0).to_pylist()
            levels[order[lo:hi]] = thumbnails_to_array(values, wanted[lo:hi] - start, first_row=start)
        start = stop
    if len(wanted) and wanted[-1] >= start:
        raise ValueError(f"images table {path}: row {int(wanted[-1])} asked for, the table has {start} rows")
    return levels
