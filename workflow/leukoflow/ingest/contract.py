"""Ingest: the data contract of the challenge tables and one decode of every image (the `ingest` rule).

Reads train.csv (NAME,x1,y1,x2,y2,class) and test.csv (trustii_id,NAME) as the Cytologia challenge
gives them (real or synthetic) under the CSV contract (`leukoflow.csvio`), checks every row
(`rows`), and decodes each referenced image exactly once (`image_files`, `leukoflow.images`). A
structurally unusable table, or one that leaves no usable row, stops the run with `IngestError`;
bad rows and images are repaired or quarantined, each decision with a reason code in the ledger,
and rows_in = kept + repaired + quarantined always holds. The input folder is only read: repairs
are written as working copies elsewhere.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.constants import TEST_COLUMNS, TRAIN_COLUMNS
from leukoflow.images import decode_image, perceptual_hash, rgb_mean_std  # noqa: F401 (re-exported)
from leukoflow.ingest.findings import (  # noqa: F401 (re-exported)
    COORDINATE_COLUMNS, IMAGES_TABLE, REASON_CODES, STAGE, TEST_TABLE, TRAIN_TABLE, Finding, IngestError, status_of,
)
from leukoflow.ingest.image_files import (  # noqa: F401 (re-exported)
    ImageRecord, inspect_image, list_image_folder, measure_images, referenced_images,
)
from leukoflow.ingest.rows import (  # noqa: F401 (re-exported)
    CheckedTestRows, CheckedTrainRows, check_test_rows, check_train_rows, parse_decimal, parse_integer,
    propagate_image_findings, read_csv_table, unsafe_name_problem,
)
from leukoflow.ledger import (
    ACTION_QUARANTINED, NO_ROW, STATUS_OK, STATUS_QUARANTINED, STATUS_REPAIRED, LedgerBuilder,
)

logger = logging.getLogger(__name__)
BYTES_PER_MB = 1024 * 1024
# Images per row group of images.parquet: about 10 MB of records at a time, whatever the dataset's size.
IMAGE_ROWS_PER_GROUP = 4096


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
    for column in ("width", "height", "channels", "mode", "file_sha256", "pixel_mean", "pixel_std", "phash",
                   "thumbnail"):
        columns[column] = [getattr(r, column) for r in records]
    return _typed_frame(columns, tables.INGEST_IMAGES)


def write_image_rows(records: Iterable[ImageRecord], splits: dict[str, str],
                     table: tables.TableWriter) -> dict[str, list[Finding]]:
    """Write the images table in row groups as the records come; keep only each image's findings."""
    findings: dict[str, list[Finding]] = {}
    group: list[ImageRecord] = []
    for record in records:
        findings[record.name] = record.findings
        group.append(record)
        if len(group) == IMAGE_ROWS_PER_GROUP:
            table.write(frame_of_images(group, splits))
            group = []
    if group or not findings:
        table.write(frame_of_images(group, splits))
    return findings


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


def build_ledger(train: CheckedTrainRows, test: CheckedTestRows, image_findings: dict[str, list[Finding]],
                 unreferenced: list[str], images_dir: Path) -> LedgerBuilder:
    """All ingest decisions: train rows, test rows, images, then unreferenced files, each in order."""
    ledger = LedgerBuilder()
    for table, rows in ((TRAIN_TABLE, train), (TEST_TABLE, test)):
        for row, (name, findings) in enumerate(zip(rows.names, rows.findings)):
            for field_name, action, reason, detail in findings:
                ledger.add(STAGE, table, row, name, field_name, action, reason, detail)
    for name, findings in image_findings.items():
        for field_name, action, reason, detail in findings:
            ledger.add(STAGE, IMAGES_TABLE, NO_ROW, name, field_name, action, reason, detail)
    for name in unreferenced:
        ledger.add(STAGE, IMAGES_TABLE, NO_ROW, name, "file", ACTION_QUARANTINED, "unreferenced_image",
                   f"file of {images_dir} referenced by neither {TRAIN_TABLE} nor {TEST_TABLE}")
    return ledger


# ---------------------------------------------------------------- entry

def ingest(*, train_csv: str, test_csv: str, images_dir: str, images: str, boxes: str, test: str, ledger: str,
           repaired: str, threads: int, chunksize: int, decode_reduction: int, phash_reducing_gap: float | None,
           max_image_mb: float) -> dict[str, Any]:
    """Check the challenge tables, decode every referenced image once, write the ingest tables.

    Every input row and image keeps its row in the tables, with status ok | repaired | quarantined
    and its reason codes (`REASON_CODES`).

    Args:
        train_csv: train.csv (NAME,x1,y1,x2,y2,class).
        test_csv: test.csv (trustii_id,NAME).
        images_dir: folder of the images (train and test together); only read.
        images: output table of the images (tables.INGEST_IMAGES).
        boxes: output table of the train rows (tables.INGEST_BOXES).
        test: output table of the test rows (tables.INGEST_TEST).
        ledger: output ledger (tables.LEDGER).
        repaired: folder of the RGB working copies of repaired images; must lie outside `images_dir`.
        threads: decoding processes (1 decodes in this process).
        chunksize: images per task sent to a decoding process.
        decode_reduction: 1 decodes every image at full size; 2, 4 or 8 decodes JPEGs at that fraction
            of their size (`leukoflow.images.decode_rgb`), and measures them on that decode.
        phash_reducing_gap: None for exactly `imagehash.phash` of the full image; a value > 1 to take
            the pHash and the thumbnail from one box-reduced grey copy (`leukoflow.images.reduced_grey`).
        max_image_mb: files larger than this are quarantined (too_large) without being read.

    Returns:
        The summary: row and image counts per status, ledger entries per table and reason code,
        unreferenced images, repairs of the CSV files, timing.

    Raises:
        IngestError: a table or the image folder is structurally unusable, an output folder lies
            inside the image folder, or no usable train or test row is left.
    """
    started = time.perf_counter()
    images_dir_path, repaired_dir = Path(images_dir), Path(repaired)
    _refuse_inside_input(images_dir_path, *(Path(p).parent for p in (images, boxes, test, ledger)), repaired_dir)
    train_table = read_csv_table(train_csv, TRAIN_COLUMNS)
    # Header-only is legal here: a held-out split (data.holdout_fraction) is drawn after ingest.
    test_table = read_csv_table(test_csv, TEST_COLUMNS, allow_empty=True)
    train_rows, test_rows = check_train_rows(train_table), check_test_rows(test_table)
    files = list_image_folder(images_dir_path)
    splits = referenced_images(train_rows, test_rows)
    repaired_dir.mkdir(parents=True, exist_ok=True)
    records = measure_images(splits, set(test_rows.names), images_dir_path, repaired_dir, files,
                             workers=threads, chunksize=chunksize, progress=sys.stderr.isatty(),
                             phash_reducing_gap=phash_reducing_gap, decode_reduction=decode_reduction,
                             max_bytes=int(max_image_mb * BYTES_PER_MB))
    images_table = tables.TableWriter(images, tables.INGEST_IMAGES)
    try:
        image_findings = write_image_rows(records, splits, images_table)
        propagate_image_findings(train_rows.names, train_rows.findings, image_findings)
        propagate_image_findings(test_rows.names, test_rows.findings, image_findings)
        unreferenced = sorted(files - set(splits))
        decisions = build_ledger(train_rows, test_rows, image_findings, unreferenced, images_dir_path)
        frames = {"boxes": frame_of_boxes(train_rows), "test": frame_of_test_rows(test_rows)}
        _refuse_when_nothing_usable(frames, decisions, train_csv, test_csv)
    except BaseException:
        images_table.discard()
        raise
    images_table.commit()
    tables.write_table(frames["boxes"], boxes, tables.INGEST_BOXES)
    tables.write_table(frames["test"], test, tables.INGEST_TEST)
    tables.write_table(decisions.to_frame(), ledger, tables.LEDGER)
    image_status = pd.Series([status_of(findings)[0] for findings in image_findings.values()], dtype="str")
    summary = summarize(frames, image_status, decisions, unreferenced, time.perf_counter() - started, threads)
    summary["extra_columns"] = {TRAIN_TABLE: train_table.extra_columns, TEST_TABLE: test_table.extra_columns}
    summary["csv_repairs"] = {TRAIN_TABLE: train_table.repairs, TEST_TABLE: test_table.repairs}
    logger.info("ingest: %s", {k: v for k, v in summary.items() if k != "reasons"})
    return summary


def run_into(out_dir: str | Path, *, train_csv: str | Path, test_csv: str | Path, images_dir: str | Path,
             threads: int, chunksize: int, decode_reduction: int, phash_reducing_gap: float | None,
             max_image_mb: float) -> dict[str, Any]:
    """`ingest` with the workflow's file names under one folder (tests and benchmarks)."""
    out_dir = Path(out_dir)
    return ingest(train_csv=str(train_csv), test_csv=str(test_csv), images_dir=str(images_dir),
                  images=str(out_dir / "images.parquet"), boxes=str(out_dir / "boxes.parquet"),
                  test=str(out_dir / "test.parquet"), ledger=str(out_dir / "ledger.csv"),
                  repaired=str(out_dir / "repaired"), threads=threads, chunksize=chunksize,
                  decode_reduction=decode_reduction, phash_reducing_gap=phash_reducing_gap, max_image_mb=max_image_mb)


def _refuse_inside_input(images_dir: Path, *outputs: Path) -> None:
    source = images_dir.resolve()
    for output in outputs:
        if output.resolve().is_relative_to(source):
            raise IngestError(f"{output}: output folder lies inside the image folder {images_dir}, which is only read")


def _refuse_when_nothing_usable(frames: dict[str, pd.DataFrame], decisions: LedgerBuilder,
                                train_csv: str | Path, test_csv: str | Path) -> None:
    """Later stages cannot train or predict on zero rows: stop here and say why the rows went."""
    reasons = decisions.reason_counts()
    for frame, table, path in ((frames["boxes"], TRAIN_TABLE, train_csv), (frames["test"], TEST_TABLE, test_csv)):
        if len(frame) and (frame["status"] == STATUS_QUARANTINED).all():
            why = ", ".join(f"{reason} x{count}" for reason, count in reasons.get(table, {}).items())
            raise IngestError(f"{path}: no usable row left: all {len(frame)} rows were quarantined ({why}); "
                              "see the reason codes in docs/reliability.md")


def summarize(frames: dict[str, pd.DataFrame], image_status: pd.Series, ledger: LedgerBuilder, unreferenced: list[str],
              seconds: float, workers: int) -> dict[str, Any]:
    """Counts per status for rows (train + test) and images; checks that nothing went uncounted."""
    row_status = pd.concat([frames["boxes"]["status"], frames["test"]["status"]]).value_counts()
    summary: dict[str, Any] = {
        "rows_in": len(frames["boxes"]) + len(frames["test"]),
        "train_rows": len(frames["boxes"]),
        "test_rows": len(frames["test"]),
        "images_in": len(image_status),
        "images_unreferenced": len(unreferenced),
    }
    for prefix, counts in (("rows", row_status), ("images", image_status.value_counts())):
        for status, key in ((STATUS_OK, "kept"), (STATUS_REPAIRED, "repaired"), (STATUS_QUARANTINED, "quarantined")):
            summary[f"{prefix}_{key}"] = int(counts.get(status, 0))
        accounted = sum(summary[f"{prefix}_{key}"] for key in ("kept", "repaired", "quarantined"))
        if accounted != summary[f"{prefix}_in"]:
            raise AssertionError(f"ingest accounting: {prefix}_in {summary[f'{prefix}_in']} != {accounted} "
                                 "kept + repaired + quarantined")
    summary["reasons"] = ledger.reason_counts()
    summary.update(workers=workers, seconds=round(seconds, 3),
                   images_per_second=round(len(image_status) / seconds, 1) if seconds > 0 else 0.0)
    return summary
