"""The one image decoder of the package: bytes -> 8-bit RGB PIL image, with what was repaired.

Every stage that opens an input image goes through `load_rgb` / `decode_image` so that all of
them agree on what a file holds: a size limit checked before a byte is read, one "unreadable
image" error whatever PIL (or a plugin another library registered) raises, truncated files
decoded as far as they go, and high-bit-depth images (16-bit grey, 32-bit integer, float)
scaled linearly to 0-255 over their type's range, never clipped. Also the per-image
measurements ingest records: SHA-256, pixel mean/std and the imagehash pHash (of a reduced grey copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageFile

RGB = "RGB"
PHASH_BITS_PER_SIDE, PHASH_HIGHFREQ_FACTOR = 8, 4  # imagehash.phash defaults: 8x8 bits from a 32x32 DCT
PHASH_SIDE = PHASH_BITS_PER_SIDE * PHASH_HIGHFREQ_FACTOR
# Rows 0-7 of the unnormalised DCT-II matrix that scipy.fftpack.dct (imagehash) applies per axis.
_DCT_LOW = 2.0 * np.cos(np.pi * np.arange(PHASH_BITS_PER_SIDE)[:, None]
                        * (2 * np.arange(PHASH_SIDE)[None, :] + 1) / (2 * PHASH_SIDE))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Full range of each high-bit-depth storage type (PIL mode prefix -> the value that maps to 255).
_SIXTEEN_BIT = 65535.0
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
Extent = tuple[float, float, float, float]  # (0, 0, width, height) of a whole file in decoded pixels


class UnreadableImage(ValueError):
    """The file is no decodable image (empty, another format, corrupt beyond truncation)."""


class ImageTooLarge(ValueError):
    """The file is larger than the configured limit; it was not read."""


@dataclass
class DecodedImage:
    """An 8-bit RGB image and what it took to get there (empty strings when nothing)."""

    image: Image.Image
    stored_mode: str
    stored_format: str
    stored_channels: int
    truncation: str = ""
    depth_scaling: str = ""
    stored_size: tuple[int, int] = (0, 0)  # the file's width and height, whatever the decode's reduction
    # (0, 0, width / r, height / r) when the decoder reduced by r (JPEG DCT scaling): fractional
    # where a side is no multiple of r, as the last decoded row or column covers a part block.
    extent: Extent = (0.0, 0.0, 0.0, 0.0)


def read_limited(path: str | Path, max_bytes: int) -> bytes:
    """The file's bytes, refused from its size alone when over `max_bytes`.

    Raises:
        ImageTooLarge: the file is larger than `max_bytes` (nothing was read).
        OSError: the file cannot be read.
    """
    size = os.stat(path).st_size
    if size > max_bytes:
        raise ImageTooLarge(f"{size} bytes, over the limit of {max_bytes} bytes (ingest.max_image_mb); not read")
    return Path(path).read_bytes()


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _truncated_images_allowed() -> Iterator[None]:
    """PIL's switch is module-global; set it only around one decode and always restore it."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_loaded(data: bytes, reduction: int) -> tuple[Image.Image, tuple[int, int], Extent]:
    """The loaded image, the file's own size and where the whole file lies in the decoded pixels;
    a JPEG decodes at 1/`reduction` (`Image.draft`)."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    extent = (0.0, 0.0, float(width), float(height))
    if reduction > 1 and image.format == "JPEG" and min(width, height) // reduction >= PHASH_SIDE:
        drafted = image.draft(image.mode, (width // reduction, height // reduction))
        extent = tuple(float(v) for v in drafted[1]) if drafted else extent
    image.load()
    return image, (width, height), extent


def decode_image(data: bytes) -> tuple[Image.Image, str]:
    """The decoded image as stored and, when it decoded only as a truncated file, PIL's message.

    Raises:
        UnreadableImage: empty bytes, or whatever PIL or a registered plugin raises otherwise.
    """
    image, _, _, truncation = _decode(data, 1)
    return image, truncation


def _decode(data: bytes, reduction: int) -> tuple[Image.Image, tuple[int, int], Extent, str]:
    if not data:
        raise UnreadableImage("unreadable image: the file has 0 bytes")
    try:
        try:
            return *_open_loaded(data, reduction), ""
        except OSError as err:
            if "truncated" not in str(err).lower():
                raise
            truncation = str(err)
        with _truncated_images_allowed():
            return *_open_loaded(data, reduction), truncation
    except Exception as err:  # NOTE: PIL and plugins raise many types (OSError, SyntaxError, ImportError, ...)
        raise UnreadableImage(f"unreadable image: {error_text(err)}") from err


def to_rgb8(image: Image.Image) -> tuple[Image.Image, str]:
    """The image as 8-bit RGB and, for a high-bit-depth one, how its values were scaled.

    16-bit modes map 0-65535 linearly onto 0-255; 32-bit integer and float images too when their
    values lie in 0-65535 (0-1 for float: 0-1 onto 0-255), otherwise their own minimum-maximum.

    Raises:
        UnreadableImage: PIL has no RGB conversion for the mode.
    """
    scaling = ""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image, scaling = _scaled_to_8_bit(image)
    if image.mode != RGB:
        try:
            image = image.convert(RGB)
        except Exception as err:  # NOTE: PIL raises ValueError/OSError for modes it cannot convert
            raise UnreadableImage(f"unreadable image: {image.mode} cannot be converted to RGB: {error_text(err)}") from err
    return image, scaling


def _scaled_to_8_bit(image: Image.Image) -> tuple[Image.Image, str]:
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        start, stop = 0.0, 1.0
    elif low >= 0.0 and high <= _SIXTEEN_BIT:
        start, stop = 0.0, _SIXTEEN_BIT
    else:
        start, stop = low, max(high, low + 1.0)
    scaled = np.rint((np.nan_to_num(values, nan=start) - start) * (255.0 / (stop - start)))
    grey = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return grey, f"{image.mode} scaled linearly {start:g}-{stop:g} -> 0-255 (values {low:g}-{high:g})"


def load_rgb(path: str | Path, max_bytes: int) -> DecodedImage:
    """Read (size-limited), decode and convert one image file to 8-bit RGB.

    Raises:
        ImageTooLarge, UnreadableImage, OSError: see `read_limited` and `decode_image`.
    """
    return decode_rgb(read_limited(path, max_bytes))


def decode_rgb(data: bytes, reduction: int = 1) -> DecodedImage:
    """`decode_image` then `to_rgb8`. With `reduction` r in 2, 4, 8 a JPEG whose short side keeps at
    least PHASH_SIDE pixels is decoded at 1/r of its size by libjpeg's DCT scaling (each output
    pixel from one r x r block's low frequencies), which skips most of the inverse DCT; other
    formats, and JPEGs too small for it, decode at full size."""
    image, stored_size, extent, truncation = _decode(data, reduction)
    stored = (image.mode, image.format or "", len(image.getbands()))
    rgb, scaling = to_rgb8(image)
    return DecodedImage(rgb, *stored, truncation, scaling, stored_size, extent)


def rgb_mean_std(image: Image.Image) -> tuple[float, float]:
    """Mean and standard deviation over all pixels and channels of an RGB image, 0-255.

    Computed exactly from PIL's per-band histogram (C, no float copy of the pixels).
    """
    counts = np.asarray(image.histogram(), dtype=np.float64).reshape(-1, 256).sum(axis=0)
    levels = np.arange(256, dtype=np.float64)
    total = counts.sum()
    mean = float(counts @ levels / total)
    variance = float(counts @ np.square(levels - mean) / total)
    return mean, math.sqrt(variance)


@dataclass(frozen=True)
class ReducedGrey:
    """An image in grey, box-reduced by whole factors, and where the full image lies in it.

    `box` is the full image's extent in the reduced image's pixel coordinates (fractional when a
    side is no multiple of its factor), so that `resized` samples exactly the full image's area.
    """

    image: Image.Image
    box: tuple[float, float, float, float]

    def resized(self, side: int, resample: Image.Resampling) -> Image.Image:
        return self.image.resize((side, side), resample, box=self.box)


def reduced_grey(image: Image.Image, reducing_gap: float | None,
                 extent: Extent | None = None) -> ReducedGrey:
    """The image in grey, converted once, reduced (`Image.reduce`) before any resampling.

    With `reducing_gap` None the grey image as decoded. With a value g the grey image is
    box-reduced (an exact mean of whole blocks) by the largest whole factor per side that keeps at
    least g x 32 pixels; resizing it with its `box` then equals Pillow's
    `grey.resize(size, resample, reducing_gap=g)`, which reduces the same way first. A 378x375
    smear at g = 2 becomes 76x75, so the 32x32 pHash resize and the thumbnail's box filter read
    25x fewer pixels, and the full-resolution image is resampled by neither. `extent` is where the
    whole file lies in `image` (`DecodedImage.extent`; default: all of it).
    """
    grey = image if image.mode == "L" else image.convert("L")
    width, height = extent[2:] if extent else (float(grey.size[0]), float(grey.size[1]))
    if reducing_gap is None:
        return ReducedGrey(grey, (0.0, 0.0, width, height))
    factors = tuple(max(1, int(length / PHASH_SIDE / reducing_gap)) for length in (width, height))
    reduced = grey.reduce(factors) if factors != (1, 1) else grey
    return ReducedGrey(reduced, (0.0, 0.0, width / factors[0], height / factors[1]))


def phash_of_grey(grey: ReducedGrey) -> str:
    """imagehash pHash (16 hex digits) of a `ReducedGrey`: its 32x32 Lanczos resize, DCT, median.

    The 8x8 low-frequency block of imagehash's two scipy DCT-II passes is computed as one small
    matrix product (`_DCT_LOW`), and the bits are packed with numpy: the same bits as
    `str(imagehash.phash(grey.resized(32, LANCZOS)))` (tests/test_image_hash.py) without its
    per-call overhead, which in ingest cost more than the resize itself.
    """
    pixels = np.asarray(grey.resized(PHASH_SIDE, Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT_LOW @ pixels @ _DCT_LOW.T
    return np.packbits(low > np.median(low)).tobytes().hex()


def perceptual_hash(image: Image.Image, reducing_gap: float | None = None) -> str:
    """The pHash ingest records (64 bits, 16 hex digits); docs/method.md, "Perceptual hash".

    With `reducing_gap` None exactly `imagehash.phash(image)`, whose Lanczos resize of the full
    grey image to 32x32 costs about as much as decoding a 370x368 JPEG. With a value (2.0 in the
    shipped configs) `imagehash.phash(image.convert("L").resize((32, 32), LANCZOS,
    reducing_gap=g))`: about 5x cheaper, and within a few bits of the exact hash.
    """
    if reducing_gap is None:
        return str(imagehash.phash(image))
    return phash_of_grey(reduced_grey(image, reducing_gap))


def error_text(err: BaseException) -> str:
    """Exception text without object addresses, so ledgers are identical from run to run."""
    return f"{type(err).__name__}: " + _ADDRESS.sub("", str(err))
