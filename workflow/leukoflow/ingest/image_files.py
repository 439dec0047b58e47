"""Ingest, images: one decode of every referenced image (through `leukoflow.images`) and its record.

Per image: size, stored mode, SHA-256 of the bytes, RGB pixel mean/std and pHash, so that curation
never decodes again. A repair (truncated file, non-RGB or high-bit-depth pixels) writes a lossless
RGB working copy outside the input folder; a file over the size limit is quarantined unread.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from leukoflow import images
from leukoflow.ingest.findings import SPLIT_TEST, SPLIT_TRAIN, Finding, IngestError
from leukoflow.ingest.rows import CheckedTestRows, CheckedTrainRows, unsafe_name_problem
from leukoflow.ingest.thumbnails import thumbnail
from leukoflow.ledger import ACTION_QUARANTINED, ACTION_REPAIRED, REASON_SEPARATOR

# Lossless, so the working copy holds exactly the pixels whose mean/std/pHash are recorded here.
REPAIRED_FORMAT, REPAIRED_SUFFIX = "PNG", ".png"


@dataclass
class ImageTask:
    name: str
    source: str
    repaired: str  # where the working copy goes if a repair is needed
    max_bytes: int
    phash_reducing_gap: float | None = None
    decode_reduction: int = 1  # JPEGs decode at 1/n (`leukoflow.images.decode_rgb`)


@dataclass
class ImageRecord:
    """What one decode of one image tells; `findings` hold its repairs or its quarantine."""

    name: str
    path: str
    width: int = 0
    height: int = 0
    channels: int = 0
    mode: str = ""
    file_sha256: str = ""
    pixel_mean: float = math.nan
    pixel_std: float = math.nan
    phash: str = ""
    thumbnail: str = ""  # curation's duplicate confirmation (leukoflow.ingest.thumbnails)
    findings: list[Finding] = field(default_factory=list)


def inspect_image(task: ImageTask) -> ImageRecord:
    """Decode one image once and measure it; writes the RGB working copy when a repair was needed."""
    record = ImageRecord(task.name, task.source)
    try:
        data = images.read_limited(task.source, task.max_bytes)
    except images.ImageTooLarge as err:
        return _quarantine(record, "too_large", str(err))
    except OSError as err:
        return _quarantine(record, "unreadable", f"cannot read the file: {err.strerror or err}")
    record.file_sha256 = images.file_sha256(data)
    if not data:
        return _quarantine(record, "zero_size", "the file has 0 bytes")
    try:
        decoded = images.decode_rgb(data, task.decode_reduction)
    except images.UnreadableImage as err:
        return _quarantine(record, "unreadable", str(err))
    image = decoded.image
    record.width, record.height = decoded.stored_size
    record.mode, record.channels = decoded.stored_mode, decoded.stored_channels
    if decoded.truncation:
        reason = "truncated_jpeg" if decoded.stored_format == "JPEG" else "truncated_image"
        record.findings.append(("file", ACTION_REPAIRED, reason, decoded.truncation))
    if decoded.depth_scaling:
        record.findings.append(("mode", ACTION_REPAIRED, "high_bit_depth", decoded.depth_scaling + ", then RGB"))
    elif decoded.stored_mode != images.RGB:
        record.findings.append(("mode", ACTION_REPAIRED, mode_reason(decoded.stored_mode),
                                f"{decoded.stored_mode} converted to RGB"))
    record.pixel_mean, record.pixel_std = images.rgb_mean_std(image)
    grey = images.reduced_grey(image, task.phash_reducing_gap, decoded.extent)  # one grey copy for both
    record.phash = images.phash_of_grey(grey)
    record.thumbnail = thumbnail(grey)
    if record.findings:
        full_size = image if image.size == decoded.stored_size else images.decode_rgb(data).image
        full_size.save(task.repaired, format=REPAIRED_FORMAT)
        record.path = task.repaired
    return record


def mode_reason(mode: str) -> str:
    """Reason code of a non-RGB mode; modes such as 'I;16' must not carry the reason separator."""
    return "mode_" + mode.replace(REASON_SEPARATOR, "_")

def _quarantine(record: ImageRecord, reason: str, detail: str) -> ImageRecord:
    record.findings.append(("file", ACTION_QUARANTINED, reason, detail))
    return record


def inspect_images(tasks: Iterable[ImageTask], total: int, workers: int, chunksize: int,
                   progress: bool) -> Iterator[ImageRecord]:
    """`inspect_image` over the tasks in `workers` processes, yielded in task order as they come.

    Neither the tasks nor the records are held: the pool draws tasks as its workers free up and
    the caller writes each record away (ingest's images table, in row groups).
    """
    with contextlib.ExitStack() as stack:
        if workers > 1 and total > 1:
            pool = stack.enter_context(multiprocessing.Pool(processes=workers))
            results: Iterable[ImageRecord] = pool.imap(inspect_image, tasks, chunksize=chunksize)
        else:
            results = map(inspect_image, tasks)
        bar = stack.enter_context(tqdm(total=total, disable=not progress, unit="img", desc="ingest images"))
        for record in results:
            bar.update()
            yield record


def list_image_folder(images_dir: Path) -> set[str]:
    """Names of the regular files (links followed) directly inside the image folder."""
    if not images_dir.is_dir():
        raise IngestError(f"{images_dir}: image folder not found or not a directory")
    with os.scandir(images_dir) as entries:
        return {entry.name for entry in entries if entry.is_file()}


def referenced_images(train: CheckedTrainRows, test: CheckedTestRows) -> dict[str, str]:
    """Split of every safely named image the rows reference: train images sorted, then test-only ones."""
    train_names = {name for name in train.names if not unsafe_name_problem(name)}
    test_names = {name for name in test.names if not unsafe_name_problem(name)} - train_names
    return {**dict.fromkeys(sorted(train_names), SPLIT_TRAIN), **dict.fromkeys(sorted(test_names), SPLIT_TEST)}


def measure_images(splits: dict[str, str], test_names: set[str], images_dir: Path, repaired_dir: Path,
                   files: set[str], *, workers: int, chunksize: int, progress: bool,
                   phash_reducing_gap: float | None, decode_reduction: int, max_bytes: int) -> Iterator[ImageRecord]:
    """One record per referenced image, in the order of `splits`: decoded when its file exists,
    quarantined otherwise."""
    present = [name for name in splits if name in files]
    tasks = (ImageTask(name, str(images_dir / name), str(repaired_dir / (name + REPAIRED_SUFFIX)), max_bytes,
                       phash_reducing_gap, decode_reduction) for name in present)
    decoded = inspect_images(tasks, len(present), workers, chunksize, progress)
    for name, split in splits.items():
        record = next(decoded) if name in files else _quarantine(
            ImageRecord(name, str(images_dir / name)), "missing_file", _missing_detail(name, images_dir, files))
        if split == SPLIT_TRAIN and name in test_names:
            record.findings.append(("split", ACTION_QUARANTINED, "name_in_both_splits",
                                    "NAME is referenced by train.csv and by test.csv"))
        yield record


def _missing_detail(name: str, images_dir: Path, files: set[str]) -> str:
    """Why no file matches: names the file that differs only in case or Unicode normalization."""
    hints = []
    same_text = [f for f in files if unicodedata.normalize("NFC", f) == unicodedata.normalize("NFC", name)]
    if same_text:
        forms = f"NAME is {_normal_form(name)}, the file name is {_normal_form(same_text[0])}"
        hints.append(f"{same_text[0]!r} differs only in Unicode normalization ({forms}); "
                     "rename the file or the NAME to one form")
    else:
        same_case = [f for f in files if f.casefold() == name.casefold()]
        if same_case:
            hints.append(f"{same_case[0]!r} differs only in case")
    return f"no regular file {name!r} in {images_dir}" + "".join(f"; {hint}" for hint in hints)


def _normal_form(text: str) -> str:
    for form in ("NFC", "NFD"):
        if unicodedata.normalize(form, text) == text:
            return form
    return "neither NFC nor NFD"
