"""A small grey thumbnail of every image, computed from ingest's one decode (for curation).

The duplicate search confirms each perceptual-hash candidate pair by comparing the two images
themselves (`leukoflow.curation.confirm`); storing a THUMBNAIL_SIDE x THUMBNAIL_SIDE grey
thumbnail per image in images.parquet lets it do so without decoding any image again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
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
        try:
            levels[index] = np.frombuffer(bytes.fromhex(value), np.uint8).reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
        except ValueError as err:
            raise ValueError(f"images table, row {first_row + row}: thumbnail is not hexadecimal ({err})") from None
    return levels


# Rows decoded at a time: their hex text and its digits are ~5 KB per row, only while they are decoded.
_BATCH_ROWS = 2048
_ROW_BYTES = THUMBNAIL_SIDE * THUMBNAIL_SIDE
_NOT_HEX = 255


def _hex_digit_values() -> np.ndarray:
    """Value of each byte as a hex digit (either case), _NOT_HEX for any other byte."""
    values = np.full(256, _NOT_HEX, np.uint8)
    for value, digit in enumerate("0123456789abcdef"):
        values[ord(digit)] = values[ord(digit.upper())] = value
    return values


_HEX_DIGITS = _hex_digit_values()


def _hex_column(column: pa.Array) -> np.ndarray | None:
    """(rows, side, side) uint8 of a column whose every value is a thumbnail's hex digits, decoded
    from the Arrow buffers without a Python string; None when some value is not (missing, other
    length, other text), for the row-by-row decode to name it."""
    size = THUMBNAIL_SIDE * THUMBNAIL_SIDE
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    _, offsets, data = column.buffers()
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(offsets, offset_type)[column.offset:column.offset + len(column) + 1]
    if data is None or not (np.diff(offsets) == 2 * size).all():
        return None
    digits = _HEX_DIGITS[np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]]]
    if digits.max(initial=0) == _NOT_HEX:
        return None
    levels = digits[0::2] << 4
    levels |= digits[1::2]
    return levels.reshape(-1, THUMBNAIL_SIDE, THUMBNAIL_SIDE)


def _batches_of_rows(path: str | Path, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in `rows`, their uint8 thumbnails) per record batch of the images table at `path`:
    the hex text of all thumbnails (2 KB per image, 1.3 GB as a pandas column at 300k images) is
    never held (BENCHMARKS.md)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    start = 0
    # pre_buffer off: buffered column chunks kept about 100 MB of Arrow memory at 69k images
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=_BATCH_ROWS, columns=["thumbnail"]):
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            local = wanted[lo:hi] - start
            decoded = _hex_column(batch.column(0))
            if decoded is None:  # row by row, only the rows asked for: a quarantined image has no thumbnail
                yield order[lo:hi], thumbnails_to_array(batch.column(0).to_pylist(), local, first_row=start)
            else:
                yield order[lo:hi], decoded[local]
        start = stop
    if len(wanted) and wanted[-1] >= start:
        raise ValueError(f"images table {path}: row {int(wanted[-1])} asked for, the table has {start} rows")


def _runs(sorted_rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, stop) index bounds of the runs of consecutive values in a sorted array."""
    if not len(sorted_rows):
        return
    bounds = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    yield from zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [len(sorted_rows)]]).tolist())


class ThumbnailFile:
    """Thumbnails in a raw file (THUMBNAIL_SIDE^2 bytes per image, in position order), read like a
    uint8 array: `thumbnails[rows]` reads those rows only, a run of consecutive rows at once.

    Dedup works on it instead of an array of every thumbnail in memory, which grew its peak by 1 KB
    per image (293 MB at 300k images); the file's pages sit in the OS cache, not in the process.
    """

    def __init__(self, handle: BinaryIO, count: int) -> None:
        self._handle = handle
        self.shape = (count, THUMBNAIL_SIDE, THUMBNAIL_SIDE)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: int | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim == 0:
            return self[rows[None]][0]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"thumbnail rows {rows.min()}..{rows.max()} outside 0..{len(self) - 1}")
        increasing = len(rows) < 2 or bool((np.diff(rows) > 0).all())  # as the layouts read them: no copy
        unique, inverse = (rows, None) if increasing else np.unique(rows, return_inverse=True)
        levels = np.empty((len(unique), *self.shape[1:]), np.uint8)
        for first, stop in _runs(unique):
            self._handle.seek(int(unique[first]) * _ROW_BYTES)
            target = memoryview(levels[first:stop]).cast("B")
            if self._handle.readinto(target) != len(target):
                raise OSError(f"thumbnail file: rows {unique[first]}..{unique[stop - 1]} are not all written")
        return levels if inverse is None else levels[inverse.ravel()]

    def write(self, positions: np.ndarray, levels: np.ndarray) -> None:
        """Store `levels[k]` at position `positions[k]`."""
        order = np.argsort(positions, kind="stable")
        positions, levels = positions[order], levels[order]
        for first, stop in _runs(positions):
            self._handle.seek(int(positions[first]) * _ROW_BYTES)
            self._handle.write(memoryview(np.ascontiguousarray(levels[first:stop])).cast("B"))


ThumbnailArray = np.ndarray | ThumbnailFile  # what the duplicate search reads thumbnails from


def spill_thumbnails(path: str | Path, rows: np.ndarray, handle: BinaryIO) -> ThumbnailFile:
    """The uint8 thumbnails of the images table at `path` at row positions `rows`, position k
    holding row rows[k], written into the open binary file `handle` (a temporary file) one record
    batch at a time; read them back through the returned `ThumbnailFile`."""
    thumbnails = ThumbnailFile(handle, len(rows))
    for positions, block in _batches_of_rows(path, rows):
        thumbnails.write(positions, block)
    handle.flush()
    return thumbnails
