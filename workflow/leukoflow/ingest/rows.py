"""Ingest, rows: read train.csv / test.csv under the data contract and check every row.

Nothing about the images here: each row gets its findings (repairs, quarantine reasons) from its
own fields; `propagate_image_findings` later adds what the image decode found.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.constants import CLASS_TO_INDEX, TEST_COLUMNS, TRAIN_COLUMNS
from leukoflow.csvio import REPAIR_TRAILING_FIELD, CsvContractError, CsvStream, read_csv_stream
from leukoflow.ingest.findings import (
    CLASS_COLUMN, COORDINATE_COLUMNS, ID_COLUMN, NAME_COLUMN, TEST_TABLE, TRAIN_TABLE, Finding, IngestError,
    is_quarantined,
)
from leukoflow.ledger import ACTION_QUARANTINED, ACTION_REPAIRED

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_INT64_LIMIT = 2**63


def read_csv_table(path: str | Path, expected: tuple[str, ...], *, allow_empty: bool = False) -> CsvStream:
    """Header and data records of a challenge CSV under the data contract (`leukoflow.csvio`).

    Raises:
        IngestError: the file breaks the contract; the message names file, line and field.
    """
    role = TRAIN_TABLE if expected == TRAIN_COLUMNS else TEST_TABLE
    try:
        return read_csv_stream(path, expected, role=role, allow_empty=allow_empty)
    except CsvContractError as err:
        raise IngestError(str(err)) from err


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


def _fields(table: CsvStream, line: int, record: list[str], columns: Iterable[str],
            findings: list[Finding]) -> dict[str, str]:
    """The named fields of one record, stripped; records field-count and white-space findings."""
    if REPAIR_TRAILING_FIELD in table.repairs:
        findings.append(("row", ACTION_REPAIRED, REPAIR_TRAILING_FIELD,
                         f"line {line}: empty field after the last column removed"))
    if len(record) != len(table.header):
        findings.append(("row", ACTION_QUARANTINED, "field_count",
                         f"line {line}: {len(record)} fields, header has {len(table.header)}"))
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
    # x1, y1, x2, y2 of every row, one flat float64 array: 32 B per row, against 184 B as lists of floats
    coordinates: array = field(default_factory=lambda: array("d"))
    labels: list[str] = field(default_factory=list)
    class_indices: list[int] = field(default_factory=list)
    findings: list[list[Finding]] = field(default_factory=list)


@dataclass
class CheckedTestRows:
    names: list[str] = field(default_factory=list)
    trustii_ids: list[int] = field(default_factory=list)
    findings: list[list[Finding]] = field(default_factory=list)


def check_train_rows(table: CsvStream) -> CheckedTrainRows:
    """Parse and check every train.csv row, one record at a time; nothing about the images yet."""
    rows = CheckedTrainRows()
    for line, record in table:
        findings: list[Finding] = []
        values = _fields(table, line, record, TRAIN_COLUMNS, findings)
        _check_name(values[NAME_COLUMN], findings)
        coordinates = [parse_decimal(values[column]) for column in COORDINATE_COLUMNS]
        for column, value in zip(COORDINATE_COLUMNS, coordinates):
            if math.isnan(value):
                findings.append((column, ACTION_QUARANTINED, "bad_coordinate",
                                 f"{values[column]!r} is not a finite decimal number"))
        label = values[CLASS_COLUMN]
        if label not in CLASS_TO_INDEX:
            findings.append((CLASS_COLUMN, ACTION_QUARANTINED, "unknown_class", f"{label!r} is not a class code"))
        rows.names.append(sys.intern(values[NAME_COLUMN]))  # one string per image and per class, not per row
        rows.coordinates.extend(coordinates)
        rows.labels.append(sys.intern(label))
        rows.class_indices.append(CLASS_TO_INDEX.get(label, -1))
        rows.findings.append(findings)
    _flag_repeated_boxes(rows)
    return rows


def _flag_repeated_boxes(rows: CheckedTrainRows) -> None:
    """A box given twice would count twice as ground truth; the first copy is kept.

    Rows are compared through one stable sort of their keys (name code, coordinates, class code):
    a dict of one key tuple per row peaked 42 MB higher at 300k images (BENCHMARKS.md, "Flat memory")."""
    usable = np.flatnonzero([not is_quarantined(findings) for findings in rows.findings])
    if len(usable) < 2:
        return
    coordinates = np.frombuffer(rows.coordinates, np.float64).reshape(-1, len(COORDINATE_COLUMNS))[usable]
    keys = (pd.factorize(pd.Series([rows.names[row] for row in usable], dtype=object))[0], *coordinates.T,
            pd.factorize(pd.Series([rows.labels[row] for row in usable], dtype=object))[0])
    order = np.lexsort(keys[::-1])  # stable: the rows of one key stay in row order
    repeats = np.ones(len(order) - 1, bool)
    for key in keys:
        repeats &= key[order[1:]] == key[order[:-1]]
    new_key = np.concatenate([[True], ~repeats])
    first_of_key = order[np.flatnonzero(new_key)][np.cumsum(new_key) - 1]
    for position in np.flatnonzero(~new_key):
        rows.findings[usable[order[position]]].append(
            ("row", ACTION_QUARANTINED, "duplicate_row", f"same NAME, box and class as row {usable[first_of_key[position]]}"))


def check_test_rows(table: CsvStream) -> CheckedTestRows:
    """Parse and check every test.csv row, one record at a time; the first row of a repeated
    trustii_id is kept."""
    rows = CheckedTestRows()
    first_row: dict[int, int] = {}
    for row, (line, record) in enumerate(table):
        findings: list[Finding] = []
        values = _fields(table, line, record, TEST_COLUMNS, findings)
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


def propagate_image_findings(names: list[str], row_findings: list[list[Finding]],
                             image_findings: dict[str, list[Finding]]) -> None:
    """Every repair or quarantine of an image reaches the rows of that image as image_<reason>."""
    for name, findings in zip(names, row_findings):
        for _, action, reason, detail in image_findings.get(name, ()):
            findings.append((NAME_COLUMN, action, f"image_{reason}", detail))
