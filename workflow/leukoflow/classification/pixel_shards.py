"""Compact pixel caches: every square RGB tile encoded on its own, all of them in one shard file.

A shard is `MAGIC`, a 4-byte little-endian header length, a JSON header (`format`, `size`,
`rows`) and then the encoded tiles back to back. Where each tile lies is kept in the cache's
index table (columns `SHARD_COLUMNS`: byte offset, byte length and the CRC-32 of the bytes), so
a reader seeks straight to any row and notices a damaged one.

Formats (`FORMATS`): `webp` (lossless WebP, the default: about 1/6 to 1/8 of the raw bytes on
real smear crops at 384-512 px), `png` (lossless, larger and slower to encode) and `raw` (the
uint8 bytes as they are, for machines where decoding would hold a GPU back). Lossless formats
give back exactly the pixels that were cached, so the classifiers' figures do not change with
the format.

`PixelCache` reads a shard like the uint8 array `[rows, size, size, 3]` it stands for:
`cache[rows]` decodes the given rows (in a thread pool: Pillow releases the GIL while decoding).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from array import array
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin, WebPImagePlugin

FORMATS = ("webp", "png", "raw")
SHARD_COLUMNS = ["offset", "length", "crc32"]
MAGIC = b"LFSHARD1"
# Lossless WebP effort: method 1 with quality 50 compresses real crops about as well as the
# slowest settings (within 5 %) at a third of their encoding time.
_WEBP = {"lossless": True, "method": 1, "quality": 50}
_PNG = {"compress_level": 6}
# Each format's own reader rather than Image.open: no format probing, and no library that wraps
# Image.open can change what a bad tile raises (ultralytics retries a failed open through an
# optional HEIF plugin and raises ModuleNotFoundError where it is not installed).
_READERS = {"webp": WebPImagePlugin.WebPImageFile, "png": PngImagePlugin.PngImageFile}


def encode_tile(tile: np.ndarray, fmt: str) -> bytes:
    """The bytes of one uint8 `[size, size, 3]` tile in `fmt`."""
    if fmt == "raw":
        return np.ascontiguousarray(tile, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    if fmt == "webp":
        Image.fromarray(tile).save(buffer, "WEBP", **_WEBP)
    elif fmt == "png":
        Image.fromarray(tile).save(buffer, "PNG", **_PNG)
    else:
        raise ValueError(f"unknown pixel cache format {fmt!r}; expected one of {FORMATS}")
    return buffer.getvalue()


def decode_tile(blob: bytes | memoryview, fmt: str, size: int) -> np.ndarray:
    """The uint8 `[size, size, 3]` tile of `encode_tile`'s bytes; raises on anything else."""
    if fmt == "raw":
        return np.frombuffer(blob, dtype=np.uint8).reshape(size, size, 3)
    if fmt not in _READERS:
        raise ValueError(f"unknown pixel cache format {fmt!r}; expected one of {FORMATS}")
    with _READERS[fmt](io.BytesIO(blob)) as image:
        tile = np.asarray(image.convert("RGB"))
    if tile.shape != (size, size, 3):
        raise ValueError(f"decoded a {tile.shape} tile, expected {(size, size, 3)}")
    return tile


def _header(fmt: str, size: int, rows: int) -> bytes:
    text = json.dumps({"format": fmt, "size": size, "rows": rows}, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(text)) + text


def write_shard(path: str | Path, blobs: Iterable[bytes], *, fmt: str, size: int, rows: int) -> pd.DataFrame:
    """Write `rows` encoded tiles to `path` (via a partial file); returns their SHARD_COLUMNS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    offsets, lengths, checksums = array("q"), array("q"), array("q")  # 24 B per tile; lists of ints: 108 B
    with open(partial, "wb") as handle:
        handle.write(_header(fmt, size, rows))
        for blob in blobs:
            offsets.append(handle.tell())
            lengths.append(len(blob))
            checksums.append(zlib.crc32(blob))
            handle.write(blob)
    if len(offsets) != rows:
        partial.unlink()
        raise RuntimeError(f"pixel shard {path}: got {len(offsets)} tiles, expected {rows}")
    partial.replace(path)
    return pd.DataFrame({"offset": np.frombuffer(offsets, dtype=np.int64), "length": np.frombuffer(lengths, np.int64),
                         "crc32": np.frombuffer(checksums, np.int64)})


def read_header(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[:len(MAGIC)] != MAGIC:
            raise ValueError(f"pixel shard {path}: not a leukoflow pixel shard (bad magic bytes)")
        (length,) = struct.unpack("<I", head[len(MAGIC):])
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise ValueError(f"pixel shard {path}: unreadable header: {error}") from error
    if header.get("format") not in FORMATS or not isinstance(header.get("size"), int):
        raise ValueError(f"pixel shard {path}: header {header} names no known format and size")
    return header


class PixelCache:
    """A shard read like the uint8 array `[rows, size, size, 3]` it encodes (rows from its index)."""

    def __init__(self, path: str | Path, index: pd.DataFrame, *, decoders: int = 1) -> None:
        self.path = Path(path)
        header = read_header(self.path)
        self.format, self.size = header["format"], header["size"]
        missing = [c for c in SHARD_COLUMNS if c not in index.columns]
        if missing or header["rows"] != len(index):
            raise ValueError(f"pixel shard {self.path}: the index has {len(index)} rows and lacks {missing}; "
                             f"the shard holds {header['rows']} rows")
        self.ids = index["id"].astype(str).to_numpy() if "id" in index.columns else np.arange(len(index)).astype(str)
        self.offsets = index["offset"].to_numpy("int64")
        self.lengths = index["length"].to_numpy("int64")
        self.checksums = index["crc32"].to_numpy("int64")
        self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r") if len(index) else np.zeros(0, np.uint8)
        ends = self.offsets + self.lengths
        beyond = np.flatnonzero((ends > len(self._bytes)) | (self.offsets < 0))
        if len(beyond):
            row = int(beyond[0])
            raise ValueError(f"pixel shard {self.path}: row {row} (id {self.ids[row]}) lies beyond the end of the "
                             f"file ({int(ends[row])} > {len(self._bytes)} bytes): the shard is truncated")
        self.decoders = max(1, int(decoders))
        self._pool: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.offsets), self.size, self.size, 3)

    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.offsets)

    def tile(self, row: int) -> np.ndarray:
        """One decoded row; a damaged row raises a ValueError naming the shard file and the row."""
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"pixel shard {self.path}: row {row} out of range (0..{len(self) - 1})")
        blob = self._bytes[self.offsets[row]:self.offsets[row] + self.lengths[row]]
        where = f"pixel shard {self.path}: row {row} (id {self.ids[row]})"
        if zlib.crc32(blob) != self.checksums[row]:
            raise ValueError(f"{where} is corrupt: its bytes do not match the index checksum")
        try:
            return decode_tile(blob if self.format == "raw" else blob.tobytes(), self.format, self.size)
        except (OSError, ValueError, SyntaxError) as error:  # PIL's readers raise SyntaxError on foreign bytes
            raise ValueError(f"{where} cannot be decoded: {error}") from error

    def __getitem__(self, rows: Any) -> np.ndarray:
        """Decoded rows: an int gives `[size, size, 3]`, a slice or int array `[n, size, size, 3]`;
        a tuple indexes the decoded rows further, as numpy does."""
        if isinstance(rows, tuple):
            head, rest = (rows[0], rows[1:]) if rows else (slice(None), ())
            decoded = self[head]
            return decoded[rest] if np.isscalar(head) else decoded[(slice(None), *rest)]
        if np.isscalar(rows):
            return self.tile(int(rows))
        picked = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype="int64")
        out = np.empty((len(picked), self.size, self.size, 3), dtype=np.uint8)
        if self.decoders > 1 and len(picked) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.decoders)
            for k, tile in enumerate(self._pool.map(self.tile, picked)):
                out[k] = tile
        else:
            for k, row in enumerate(picked):
                out[k] = self.tile(row)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)
