"""Ingest: the data contract of the challenge tables and one decode of every image (METHOD.md §1, §2.1).

Reads train.csv (NAME,x1,y1,x2,y2,class) and test.csv (trustii_id,NAME) as the Cytologia challenge
gives them (real or synthetic), checks their structure and every row, and decodes each referenced
image exactly once with PIL. Per image it records size, stored mode, SHA-256 of the bytes, the RGB
pixel mean/std and the imagehash pHash, so that curation (METHOD.md §2: pHash de-duplication, box
clipping, fold covariates) never decodes again. A structurally unusable table stops the run with
`IngestError`; bad rows and images are repaired or quarantined, each decision with a reason code in
the ledger. The input folder is only read: repairs are written as working copies elsewhere.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import math
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm import tqdm

from leukoflow import tables
from leukoflow.constants import CLASS_TO_INDEX, TEST_COLUMNS, TRAIN_COLUMNS
from leukoflow.ingest.thumbnails import thumbnail
from leukoflow.ledger import (
    ACTION_QUARANTINED, ACTION_REPAIRED, NO_ROW, REASON_SEPARATOR, STATUS_OK, STATUS_QUARANTINED,
    STATUS_REPAIRED, LedgerBuilder, join_reasons,
)

logger = logging.getLogger(__name__)

STAGE = "ingest"
TRAIN_TABLE, TEST_TABLE, IMAGES_TABLE = "train.csv", "test.csv", "images"
SPLIT_TRAIN, SPLIT_TEST = "train", "test"
COORDINATE_COLUMNS = TRAIN_COLUMNS[1:5]
NAME_COLUMN, CLASS_COLUMN, ID_COLUMN = "NAME", "class", "trustii_id"

# Reason codes written by ingest; image reasons reach the rows of that image as "image_<code>".
REASON_CODES: dict[str, str] = {
    "whitespace_stripped": "a field had leading/trailing white space, removed (repair)",
    "field_count": "the row has a different number of fields than the header",
    "unsafe_name": "NAME is empty or not a plain file name ('/', '\\', '.', '..', control characters)",
    "bad_coordinate": "a coordinate is not a finite decimal number",
    "unknown_class": "class is not one of constants.CLASSES (exact, case-sensitive)",
    "duplicate_row": "the same NAME, box and class as an earlier train.csv row",
    "bad_trustii_id": "trustii_id is not an integer",
    "duplicate_trustii_id": "trustii_id already used by an earlier test.csv row (the first one is kept)",
    "missing_file": "no regular file of that NAME in the image folder",
    "zero_size": "the image file is empty",
    "unreadable": "PIL cannot decode the file",
    "truncated_jpeg": "the file decodes only with ImageFile.LOAD_TRUNCATED_IMAGES; working copy written (repair)",
    "truncated_image": "as truncated_jpeg, for another format",
    "mode_<MODE>": "stored in PIL mode <MODE>, not RGB; RGB working copy written (repair)",
    "name_in_both_splits": "NAME is referenced by train.csv and by test.csv",
    "unreferenced_image": "a file of the image folder that no CSV row references (not a row)",
}

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_INT64_LIMIT = 2**63
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SUSPECT_DELIMITERS = (";", "\t", "|")
_RGB = "RGB"
PHASH_BITS_PER_SIDE, PHASH_HIGHFREQ_FACTOR = 8, 4  # imagehash.phash defaults: 8x8 bits from a 32x32 DCT
# Lossless, so the working copy holds exactly the pixels whose mean/std/pHash are recorded here.
_REPAIRED_FORMAT, _REPAIRED_SUFFIX = "PNG", ".png"

Finding = tuple[str, str, str, str]  # (field, action, reason, detail) about one row or image


class IngestError(ValueError):
    """An input table or folder is structurally unusable; the message names file, row and field."""


# ---------------------------------------------------------------- tables

@dataclass
class CsvTable:
    """Data records of one challenge CSV, fields still text."""

    path: Path
    header: list[str]
    records: list[list[str]]
    lines: list[int]  # 1-based file line of each record
    extra_columns: list[str]

    def column(self, name: str) -> int:
        return self.header.index(name)


def read_csv_table(path: str | Path, expected: tuple[str, ...], *, allow_empty: bool = False) -> CsvTable:
    """Header and data records of a challenge CSV.

    Blank lines are skipped (as pandas does), so record i is the i-th data row. Columns may come in
    any order; columns beyond `expected` are kept aside and reported.

    Raises:
        IngestError: file absent or not UTF-8, unparsable, a wrong delimiter, a missing or repeated
            column, or no data row.
    """
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records, lines = [], []
    try:
        header = [column.strip() for column in next(reader, [])]
        for record in reader:
            if record:
                records.append(record)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise IngestError(f"{path}: line {reader.line_num}: not parsable as CSV: {err}") from err
    _check_header(path, header, expected)
    if not records and not allow_empty:
        raise IngestError(f"{path}: empty table, no data row under the header {header}")
    extra = [column for column in header if column not in expected]
    return CsvTable(path, header, records, lines, extra)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IngestError(f"{path}: cannot read the table: {err}") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise IngestError(f"{path}: line {line}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _check_header(path: Path, header: list[str], expected: tuple[str, ...]) -> None:
    if not any(header):
        raise IngestError(f"{path}: empty file, no header line (expected columns {list(expected)})")
    if len(header) == 1:
        for delimiter in _SUSPECT_DELIMITERS:
            if delimiter in header[0]:
                raise IngestError(
                    f"{path}: line 1: header {header[0]!r} is a single field; the table seems "
                    f"delimited by {delimiter!r}, expected ',' between columns {list(expected)}"
                )
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise IngestError(f"{path}: line 1: column(s) {repeated} appear more than once in {header}")
    missing = [column for column in expected if column not in header]
    if missing:
        raise IngestError(f"{path}: line 1: missing column(s) {missing}; found {header}, expected {list(expected)}")


# ---------------------------------------------------------------- field checks

def unsafe_name_problem(name: str) -> str:
    """Why `name` is not a plain file name inside the image folder; empty when it is one."""
    if not name:
        return "empty NAME"
    if "/" in name or "\\" in name:
        return f"NAME {name!r} contains a path separator"
    if name in (".", ".."):
        return f"NAME {name!r} is a directory reference"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return f"NAME {name!r} contains a control character"
    return ""


def parse_decimal(text: str) -> float:
    """A finite decimal number as float, NaN for anything else ('nan', 'inf', '1_0', '', '12px')."""
    if not _DECIMAL.fullmatch(text):
        return math.nan
    value = float(text)
    return value if math.isfinite(value) else math.nan


def parse_integer(text: str) -> int | None:
    """An integer that fits int64, None otherwise."""
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if abs(value) < _INT64_LIMIT else None


def _fields(table: CsvTable, row: int, columns: Iterable[str], findings: list[Finding]) -> dict[str, str]:
    """The named fields of one record, stripped; records field-count and white-space findings."""
    record = table.records[row]
    if len(record) != len(table.header):
        findings.append(("row", ACTION_QUARANTINED, "field_count",
                         f"line {table.lines[row]}: {len(record)} fields, header has {len(table.header)}"))
    values = {}
    for column in columns:
        index = table.column(column)
        raw = record[index] if index < len(record) else ""
        values[column] = raw.strip()
        if values[column] != raw:
            findings.append((column, ACTION_REPAIRED, "whitespace_stripped", f"{raw!r} -> {values[column]!r}"))
    return values


def _check_name(name: str, findings: list[Finding]) -> None:
    problem = unsafe_name_problem(name)
    if problem:
        findings.append((NAME_COLUMN, ACTION_QUARANTINED, "unsafe_name", problem))


# ---------------------------------------------------------------- rows

@dataclass
class CheckedTrainRows:
    names: list[str] = field(default_factory=list)
    coordinates: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    class_indices: list[int] = field(default_factory=list)
    findings: list[list[Finding]] = field(default_factory=list)


@dataclass
class CheckedTestRows:
    names: list[str] = field(default_factory=list)
    trustii_ids: list[int] = field(default_factory=list)
    findings: list[list[Finding]] = field(default_factory=list)


def check_train_rows(table: CsvTable) -> CheckedTrainRows:
    """Parse and check every train.csv row; nothing about the images yet."""
    rows = CheckedTrainRows()
    for row in range(len(table.records)):
        findings: list[Finding] = []
        values = _fields(table, row, TRAIN_COLUMNS, findings)
        _check_name(values[NAME_COLUMN], findings)
        coordinates = [parse_decimal(values[column]) for column in COORDINATE_COLUMNS]
        for column, value in zip(COORDINATE_COLUMNS, coordinates):
            if math.isnan(value):
                findings.append((column, ACTION_QUARANTINED, "bad_coordinate",
                                 f"{values[column]!r} is not a finite decimal number"))
        label = values[CLASS_COLUMN]
        if label not in CLASS_TO_INDEX:
            findings.append((CLASS_COLUMN, ACTION_QUARANTINED, "unknown_class", f"{label!r} is not a class code"))
        rows.names.append(values[NAME_COLUMN])
        rows.coordinates.append(coordinates)
        rows.labels.append(label)
        rows.class_indices.append(CLASS_TO_INDEX.get(label, -1))
        rows.findings.append(findings)
    _flag_repeated_boxes(rows)
    return rows


def _flag_repeated_boxes(rows: CheckedTrainRows) -> None:
    """A box given twice would count twice as ground truth; the first copy is kept."""
    first_row: dict[tuple, int] = {}
    for row, findings in enumerate(rows.findings):
        if _is_quarantined(findings):
            continue
        key = (rows.names[row], *rows.coordinates[row], rows.labels[row])
        if key in first_row:
            findings.append(("row", ACTION_QUARANTINED, "duplicate_row", f"same NAME, box and class as row {first_row[key]}"))
        else:
            first_row[key] = row


def check_test_rows(table: CsvTable) -> CheckedTestRows:
    """Parse and check every test.csv row; the first row of a repeated trustii_id is kept."""
    rows = CheckedTestRows()
    first_row: dict[int, int] = {}
    for row in range(len(table.records)):
        findings: list[Finding] = []
        values = _fields(table, row, TEST_COLUMNS, findings)
        _check_name(values[NAME_COLUMN], findings)
        trustii_id = parse_integer(values[ID_COLUMN])
        if trustii_id is None:
            findings.append((ID_COLUMN, ACTION_QUARANTINED, "bad_trustii_id", f"{values[ID_COLUMN]!r} is not an integer"))
        elif trustii_id in first_row:
            findings.append((ID_COLUMN, ACTION_QUARANTINED, "duplicate_trustii_id",
                             f"trustii_id {trustii_id} first used on row {first_row[trustii_id]}"))
        else:
            first_row[trustii_id] = row
        rows.names.append(values[NAME_COLUMN])
        rows.trustii_ids.append(-1 if trustii_id is None else trustii_id)
        rows.findings.append(findings)
    return rows


def _is_quarantined(findings: list[Finding]) -> bool:
    return any(action == ACTION_QUARANTINED for _, action, _, _ in findings)


def status_of(findings: list[Finding]) -> tuple[str, str]:
    """(status, ';'-joined reason codes) of a row or image from its findings."""
    if not findings:
        return STATUS_OK, ""
    status = STATUS_QUARANTINED if _is_quarantined(findings) else STATUS_REPAIRED
    return status, join_reasons([reason for _, _, reason, _ in findings])


def propagate_image_findings(names: list[str], row_findings: list[list[Finding]],
                             image_findings: dict[str, list[Finding]]) -> None:
    """Every repair or quarantine of an image reaches the rows of that image as image_<reason>."""
    for name, findings in zip(names, row_findings):
        for _, action, reason, detail in image_findings.get(name, ()):
            findings.append((NAME_COLUMN, action, f"image_{reason}", detail))


# ---------------------------------------------------------------- images

@dataclass
class ImageTask:
    name: str
    source: str
    repaired: str  # where the working copy goes if a repair is needed
    phash_reducing_gap: float | None = None


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


@contextlib.contextmanager
def _truncated_images_allowed() -> Iterator[None]:
    """PIL's switch is module-global; set it only around one decode and always restore it."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_loaded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def decode_image(data: bytes) -> tuple[Image.Image, str]:
    """The decoded image and, when it decoded only as a truncated file, PIL's truncation message.

    Raises:
        Exception: whatever PIL raises for a file it cannot decode even as truncated.
    """
    try:
        return _open_loaded(data), ""
    except OSError as err:
        if "truncated" not in str(err).lower():
            raise
        truncation = str(err)
    with _truncated_images_allowed():
        return _open_loaded(data), truncation


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


def inspect_image(task: ImageTask) -> ImageRecord:
    """Decode one image once and measure it; writes the RGB working copy when a repair was needed."""
    record = ImageRecord(task.name, task.source)
    try:
        data = Path(task.source).read_bytes()
    except OSError as err:
        return _quarantine(record, "unreadable", f"cannot read the file: {err}")
    record.file_sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return _quarantine(record, "zero_size", "the file has 0 bytes")
    try:
        image, truncation = decode_image(data)
    except Exception as err:  # NOTE: PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return _quarantine(record, "unreadable", _error_text(err))
    record.width, record.height = image.size
    record.mode, record.channels = image.mode, len(image.getbands())
    if truncation:
        reason = "truncated_jpeg" if image.format == "JPEG" else "truncated_image"
        record.findings.append(("file", ACTION_REPAIRED, reason, truncation))
    if image.mode != _RGB:
        try:
            image = image.convert(_RGB)
        except Exception as err:  # NOTE: PIL has no RGB conversion for some modes (e.g. 'I;16')
            return _quarantine(record, "unreadable", f"{record.mode} cannot be converted to RGB: {_error_text(err)}")
        record.findings.append(("mode", ACTION_REPAIRED, mode_reason(record.mode), f"{record.mode} converted to RGB"))
    record.pixel_mean, record.pixel_std = rgb_mean_std(image)
    record.phash = perceptual_hash(image, task.phash_reducing_gap)
    record.thumbnail = thumbnail(image)
    if record.findings:
        image.save(task.repaired, format=_REPAIRED_FORMAT)
        record.path = task.repaired
    return record


def perceptual_hash(image: Image.Image, reducing_gap: float | None = None) -> str:
    """imagehash pHash (64 bits, 16 hex digits) of an RGB image.

    With `reducing_gap` None this is exactly `imagehash.phash(image)`, whose grey Lanczos resize
    to 32x32 costs about as much as decoding a 370x368 JPEG. A value (e.g. 2.0) lets Pillow shrink
    by whole factors first (`Image.resize(reducing_gap=...)`): about 2.5x faster, but about one
    hash in seven then differs from the exact one by 1-4 bits.
    """
    if reducing_gap is None:
        return str(imagehash.phash(image))
    side = PHASH_BITS_PER_SIDE * PHASH_HIGHFREQ_FACTOR
    grey = image.convert("L").resize((side, side), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    return str(imagehash.phash(grey, hash_size=PHASH_BITS_PER_SIDE, highfreq_factor=PHASH_HIGHFREQ_FACTOR))


def mode_reason(mode: str) -> str:
    """Reason code of a non-RGB mode; modes such as 'I;16' must not carry the reason separator."""
    return "mode_" + mode.replace(REASON_SEPARATOR, "_")


def _error_text(err: Exception) -> str:
    """Exception text without object addresses, so the ledger is identical from run to run."""
    return f"{type(err).__name__}: " + _ADDRESS.sub("", str(err))


def _quarantine(record: ImageRecord, reason: str, detail: str) -> ImageRecord:
    record.findings.append(("file", ACTION_QUARANTINED, reason, detail))
    return record


def inspect_images(tasks: list[ImageTask], workers: int, chunksize: int, progress: bool) -> list[ImageRecord]:
    """`inspect_image` over all tasks in `workers` processes; results in task order."""
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(tasks) > 1:
            pool = stack.enter_context(multiprocessing.Pool(processes=workers))
            results: Iterable[ImageRecord] = pool.imap(inspect_image, tasks, chunksize=chunksize)
        else:
            results = map(inspect_image, tasks)
        bar = stack.enter_context(tqdm(total=len(tasks), disable=not progress, unit="img", desc="ingest images"))
        records = []
        for record in results:
            records.append(record)
            bar.update()
    return records


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
                   phash_reducing_gap: float | None) -> list[ImageRecord]:
    """One record per referenced image: decoded when its file exists, quarantined otherwise."""
    tasks = [ImageTask(name, str(images_dir / name), str(repaired_dir / (name + _REPAIRED_SUFFIX)), phash_reducing_gap)
             for name in splits if name in files]
    decoded = {record.name: record for record in inspect_images(tasks, workers, chunksize, progress)}
    lowercase = {name.lower(): name for name in files}
    records = []
    for name, split in splits.items():
        record = decoded.get(name) or _quarantine(ImageRecord(name, str(images_dir / name)), "missing_file",
                                                  _missing_detail(name, images_dir, lowercase))
        if split == SPLIT_TRAIN and name in test_names:
            record.findings.append(("split", ACTION_QUARANTINED, "name_in_both_splits",
                                    "NAME is referenced by train.csv and by test.csv"))
        records.append(record)
    return records


def _missing_detail(name: str, images_dir: Path, lowercase: dict[str, str]) -> str:
    near = lowercase.get(name.lower())
    hint = f"; {near!r} differs only in case" if near else ""
    return f"no regular file {name!r} in {images_dir}{hint}"


# ---------------------------------------------------------------- frames

def frame_of_images(records: list[ImageRecord], splits: dict[str, str]) -> pd.DataFrame:
    statuses = [status_of(record.findings) for record in records]
    columns: dict[str, list[Any]] = {
        "name": [r.name for r in records],
        "split": [splits[r.name] for r in records],
        "path": [r.path for r in records],
        "status": [status for status, _ in statuses],
        "reason": [reason for _, reason in statuses],
    }
    for column in ("width", "height", "channels", "mode", "file_sha256", "pixel_mean", "pixel_std", "phash", "thumbnail"):
        columns[column] = [getattr(r, column) for r in records]
    return _typed_frame(columns, tables.INGEST_IMAGES)


def frame_of_boxes(rows: CheckedTrainRows) -> pd.DataFrame:
    statuses = [status_of(findings) for findings in rows.findings]
    coordinates = np.asarray(rows.coordinates, dtype=np.float64).reshape(-1, len(COORDINATE_COLUMNS))
    columns: dict[str, Any] = {"row": range(len(rows.names)), "name": rows.names}
    columns.update({column: coordinates[:, i] for i, column in enumerate(COORDINATE_COLUMNS)})
    columns.update({"label": rows.labels, "class_idx": rows.class_indices,
                    "status": [s for s, _ in statuses], "reason": [r for _, r in statuses]})
    return _typed_frame(columns, tables.INGEST_BOXES)


def frame_of_test_rows(rows: CheckedTestRows) -> pd.DataFrame:
    statuses = [status_of(findings) for findings in rows.findings]
    columns = {"row": range(len(rows.names)), "trustii_id": rows.trustii_ids, "name": rows.names,
               "status": [s for s, _ in statuses], "reason": [r for _, r in statuses]}
    return _typed_frame(columns, tables.INGEST_TEST)


_PANDAS_DTYPES = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}


def _typed_frame(columns: dict[str, Any], schema: tables.Schema) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(list(columns[c.name]), dtype=_PANDAS_DTYPES[c.dtype])
                         for c in schema.columns})


def build_ledger(train: CheckedTrainRows, test: CheckedTestRows, records: list[ImageRecord], unreferenced: list[str],
                 images_dir: Path) -> LedgerBuilder:
    """All ingest decisions: train rows, test rows, images, then unreferenced files, each in order."""
    ledger = LedgerBuilder()
    for table, rows in ((TRAIN_TABLE, train), (TEST_TABLE, test)):
        for row, (name, findings) in enumerate(zip(rows.names, rows.findings)):
            for field_name, action, reason, detail in findings:
                ledger.add(STAGE, table, row, name, field_name, action, reason, detail)
    for record in records:
        for field_name, action, reason, detail in record.findings:
            ledger.add(STAGE, IMAGES_TABLE, NO_ROW, record.name, field_name, action, reason, detail)
    for name in unreferenced:
        ledger.add(STAGE, IMAGES_TABLE, NO_ROW, name, "file", ACTION_QUARANTINED, "unreferenced_image",
                   f"file of {images_dir} referenced by neither {TRAIN_TABLE} nor {TEST_TABLE}")
    return ledger


# ---------------------------------------------------------------- entry

def ingest(train_csv: str | Path, test_csv: str | Path, images_dir: str | Path, out_dir: str | Path, *,
           workers: int = 1, chunksize: int = 32, progress: bool = True,
           repaired_dir: str | Path | None = None, phash_reducing_gap: float | None = None) -> dict[str, Any]:
    """Check the challenge tables, decode every referenced image once, write the ingest tables.

    Writes `out_dir/images.parquet` (tables.INGEST_IMAGES), `boxes.parquet` (INGEST_BOXES),
    `test.parquet` (INGEST_TEST), `ledger.csv` (LEDGER) and RGB working copies of repaired images
    under `repaired_dir` (default `out_dir/repaired`). Every input row and image keeps its row in
    the tables, with status ok | repaired | quarantined and its reason codes (`REASON_CODES`).

    Args:
        train_csv: train.csv (NAME,x1,y1,x2,y2,class).
        test_csv: test.csv (trustii_id,NAME).
        images_dir: folder of the images (train and test together); only read.
        out_dir: folder for the tables.
        workers: decoding processes (1 decodes in this process).
        chunksize: images per task sent to a worker process.
        progress: show a tqdm progress bar on stderr.
        repaired_dir: folder of the working copies; must lie outside `images_dir`.
        phash_reducing_gap: None for exactly `imagehash.phash`; a value > 1 for a faster, slightly
            different hash (see `perceptual_hash`).

    Returns:
        The summary: row and image counts per status, ledger entries per table and reason code,
        unreferenced images, timing.

    Raises:
        IngestError: a table or the image folder is structurally unusable, or an output folder lies
            inside the image folder.
    """
    started = time.perf_counter()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    repaired_dir = Path(repaired_dir) if repaired_dir is not None else out_dir / "repaired"
    _refuse_inside_input(images_dir, out_dir, repaired_dir)
    train_table = read_csv_table(train_csv, TRAIN_COLUMNS)
    # Header-only is legal here: a held-out split (data.holdout_fraction) is drawn after ingest.
    test_table = read_csv_table(test_csv, TEST_COLUMNS, allow_empty=True)
    train, test = check_train_rows(train_table), check_test_rows(test_table)
    files = list_image_folder(images_dir)
    splits = referenced_images(train, test)
    repaired_dir.mkdir(parents=True, exist_ok=True)
    records = measure_images(splits, set(test.names), images_dir, repaired_dir, files,
                             workers=workers, chunksize=chunksize, progress=progress,
                             phash_reducing_gap=phash_reducing_gap)
    image_findings = {record.name: record.findings for record in records}
    propagate_image_findings(train.names, train.findings, image_findings)
    propagate_image_findings(test.names, test.findings, image_findings)
    unreferenced = sorted(files - set(splits))
    ledger = build_ledger(train, test, records, unreferenced, images_dir)
    frames = {"images": frame_of_images(records, splits), "boxes": frame_of_boxes(train), "test": frame_of_test_rows(test)}
    _write_outputs(out_dir, frames, ledger)
    summary = summarize(frames, ledger, unreferenced, time.perf_counter() - started, workers)
    summary["extra_columns"] = {TRAIN_TABLE: train_table.extra_columns, TEST_TABLE: test_table.extra_columns}
    logger.info("ingest: %s", {k: v for k, v in summary.items() if k != "reasons"})
    return summary


def _refuse_inside_input(images_dir: Path, *outputs: Path) -> None:
    source = images_dir.resolve()
    for output in outputs:
        if output.resolve().is_relative_to(source):
            raise IngestError(f"{output}: output folder lies inside the image folder {images_dir}, which is only read")


def _write_outputs(out_dir: Path, frames: dict[str, pd.DataFrame], ledger: LedgerBuilder) -> None:
    tables.write_table(frames["images"], out_dir / "images.parquet", tables.INGEST_IMAGES)
    tables.write_table(frames["boxes"], out_dir / "boxes.parquet", tables.INGEST_BOXES)
    tables.write_table(frames["test"], out_dir / "test.parquet", tables.INGEST_TEST)
    tables.write_table(ledger.to_frame(), out_dir / "ledger.csv", tables.LEDGER)


def summarize(frames: dict[str, pd.DataFrame], ledger: LedgerBuilder, unreferenced: list[str],
              seconds: float, workers: int) -> dict[str, Any]:
    """Counts per status for rows (train + test) and images; checks that nothing went uncounted."""
    row_status = pd.concat([frames["boxes"]["status"], frames["test"]["status"]]).value_counts()
    image_status = frames["images"]["status"].value_counts()
    summary: dict[str, Any] = {
        "rows_in": len(frames["boxes"]) + len(frames["test"]),
        "train_rows": len(frames["boxes"]),
        "test_rows": len(frames["test"]),
        "images_in": len(frames["images"]),
        "images_unreferenced": len(unreferenced),
    }
    for prefix, counts in (("rows", row_status), ("images", image_status)):
        for status, key in ((STATUS_OK, "kept"), (STATUS_REPAIRED, "repaired"), (STATUS_QUARANTINED, "quarantined")):
            summary[f"{prefix}_{key}"] = int(counts.get(status, 0))
        accounted = sum(summary[f"{prefix}_{key}"] for key in ("kept", "repaired", "quarantined"))
        if accounted != summary[f"{prefix}_in"]:
            raise AssertionError(f"ingest accounting: {prefix}_in {summary[f'{prefix}_in']} != {accounted} "
                                 "kept + repaired + quarantined")
    summary["reasons"] = ledger.reason_counts()
    summary.update(workers=workers, seconds=round(seconds, 3),
                   images_per_second=round(len(frames["images"]) / seconds, 1) if seconds > 0 else 0.0)
    return summary
