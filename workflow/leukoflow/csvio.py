"""The one reader of every challenge CSV (train, test, holdout, expected counts, truth, submission).

Every structural problem stops with one `CsvContractError` whose message names the file, the
line and, where there is one, the field: missing or zero-byte file, text that is not UTF-8
(UTF-16/32 byte-order marks named as such), another delimiter (';', tab, '|'), a missing or
repeated column, an unterminated quote, NUL bytes, a header without rows. Two spreadsheet habits
are repaired and reported in `CsvTable.repairs` instead: a UTF-8 byte-order mark, and an empty
field after the last column on every row (trailing commas). A record whose field count differs
from the header is kept with its line number: ingest quarantines that row, `read_csv_frame`
stops naming the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SUSPECT_DELIMITERS = (";", "\t", "|")
_FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)
_INTEGER = re.compile(r"[+-]?\d+")
REPAIR_UTF8_BOM = "utf8_bom_removed"
REPAIR_TRAILING_FIELD = "trailing_empty_field"


class CsvContractError(ValueError):
    """A CSV file that breaks the data contract; the message names file, line and field."""


@dataclass
class CsvTable:
    """Header and data records of one CSV, fields still text; `lines` are 1-based file lines."""

    path: Path
    header: list[str]
    records: list[list[str]]
    lines: list[int]
    extra_columns: list[str]
    repairs: list[str] = field(default_factory=list)

    def column(self, name: str) -> int:
        return self.header.index(name)


@dataclass
class CsvStream:
    """Header of one CSV and its data records, parsed again from the decoded text on each
    iteration instead of held: ingest checks a 300k-image train.csv row by row, and its records as
    lists of strings took about 0.5 KB per row (BENCHMARKS.md, "Flat memory"). `rows` counts them."""

    path: Path
    header: list[str]
    extra_columns: list[str]
    repairs: list[str]
    rows: int
    text: str = field(repr=False)
    where: str = field(repr=False)

    def column(self, name: str) -> int:
        return self.header.index(name)

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        """(1-based file line, record) of every data record, in file order."""
        drop_last = REPAIR_TRAILING_FIELD in self.repairs
        for line, record in _parse(self.text, self.where)[1]:
            yield line, record[:-1] if drop_last else record


def read_csv_stream(path: str | Path, expected: Iterable[str], *, role: str, allow_empty: bool = False) -> CsvStream:
    """Header of a CSV that must hold the `expected` columns (any order, more allowed), its records
    read one at a time (`CsvStream`); the file is parsed once here to the end, so every structural
    problem stops the run before a record is used.

    Args:
        path: the CSV file.
        expected: required column names.
        role: what the file is for the user ('train', 'truth', 'submission', ...), used in messages.

    Raises:
        CsvContractError: see the module text.
    """
    path, expected = Path(path), tuple(expected)
    where = f"{role} file {path}"
    text, repairs = _decode(_read_bytes(path, where), where)
    header, records = _parse(text, where)
    rows, every_record_ends_empty = 0, True
    width = len(header) - 1 if header and header[-1] == "" else len(header)
    for _, record in records:  # a spreadsheet export: every row (maybe the header) ends with an empty field
        rows += 1
        every_record_ends_empty = every_record_ends_empty and len(record) == width + 1 and record[-1] == ""
    _check_header(header, expected, where)
    if rows and every_record_ends_empty:
        header = header[:-1] if header[-1] == "" else header
        repairs.append(REPAIR_TRAILING_FIELD)
    if not rows and not allow_empty:
        raise CsvContractError(f"{where}: header only, no data row under the columns {header}")
    extra = [column for column in header if column not in expected]
    return CsvStream(path, header, extra, repairs, rows, text, where)


def read_csv_records(path: str | Path, expected: Iterable[str], *, role: str, allow_empty: bool = False) -> CsvTable:
    """`read_csv_stream` with every record held (`CsvTable`): the small tables (truth, submission)."""
    stream = read_csv_stream(path, expected, role=role, allow_empty=allow_empty)
    lines, records = [], []
    for line, record in stream:
        lines.append(line)
        records.append(record)
    return CsvTable(stream.path, stream.header, records, lines, stream.extra_columns, stream.repairs)


def read_csv_frame(path: str | Path, expected: Iterable[str], *, role: str, integer_columns: Iterable[str] = (),
                   numeric_columns: Iterable[str] = (), nonempty_columns: Iterable[str] = ()) -> pd.DataFrame:
    """The CSV as pandas reads it (same dtypes as a plain `read_csv`) once it meets the contract.

    Beyond `read_csv_records`: every record has the header's field count; `integer_columns` hold
    integers, `numeric_columns` numbers or nothing, `nonempty_columns` some text, on every line.
    """
    table = read_csv_records(path, expected, role=role)
    where = f"{role} file {path}"
    for record, line in zip(table.records, table.lines):
        if len(record) != len(table.header):
            raise CsvContractError(f"{where}: line {line}: {len(record)} fields, the header has "
                                   f"{len(table.header)} ({','.join(table.header)})")
    _check_values(table, where, integer_columns, _is_integer, "is not an integer")
    _check_values(table, where, numeric_columns, _is_number_or_empty, "is not a number")
    _check_values(table, where, nonempty_columns, lambda value: bool(value.strip()), "is empty")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([table.header, *table.records])
    return pd.read_csv(io.StringIO(buffer.getvalue()))


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CsvContractError(f"{where}: cannot read it: {err.strerror or err}") from err
    if not data:
        raise CsvContractError(f"{where}: zero-byte file, no header line")
    return data


def _decode(data: bytes, where: str) -> tuple[str, list[str]]:
    for bom, encoding in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise CsvContractError(f"{where}: line 1: {encoding} text (byte-order mark {bom.hex(' ')}); "
                                   "save it as UTF-8")
    repairs = [REPAIR_UTF8_BOM] if data.startswith(codecs.BOM_UTF8) else []
    try:
        return data.decode("utf-8-sig"), repairs
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data[:err.start].count(b"\n") + 1
        column = data[line_start:err.start].count(b",") + 1
        raise CsvContractError(f"{where}: line {line}, field {column}: not UTF-8 text "
                               f"(byte {data[err.start]:#04x} at offset {err.start}: {err.reason})") from err


def _parse(text: str, where: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header, and an iterator of (1-based line, record) over the non-empty data records."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [column.strip() for column in next(reader, [])]
    except csv.Error as err:
        raise _unparsable(where, 1, err) from err

    def records() -> Iterator[tuple[int, list[str]]]:
        start = reader.line_num + 1
        try:
            for record in reader:
                if record:
                    yield start, record
                start = reader.line_num + 1
        except csv.Error as err:
            raise _unparsable(where, start, err) from err

    return header, records()


def _unparsable(where: str, line: int, err: csv.Error) -> CsvContractError:
    problem = "unterminated quote" if "end of data" in str(err) or "EOF" in str(err) else str(err)
    return CsvContractError(f"{where}: line {line}: not parsable as CSV: {problem}")


def _check_header(header: list[str], expected: tuple[str, ...], where: str) -> None:
    if not any(header):
        raise CsvContractError(f"{where}: line 1: no header line (expected columns {list(expected)})")
    if len(header) == 1:
        for delimiter in SUSPECT_DELIMITERS:
            if delimiter in header[0]:
                raise CsvContractError(f"{where}: line 1: header {header[0]!r} is one field; the table seems "
                                       f"delimited by {delimiter!r}, expected ',' between {list(expected)}")
    named = [column for column in header if column]
    repeated = sorted({column for column in named if named.count(column) > 1})
    if repeated:
        raise CsvContractError(f"{where}: line 1: column(s) {repeated} appear more than once in {header}")
    missing = [column for column in expected if column not in header]
    if missing:
        raise CsvContractError(f"{where}: line 1: missing column(s) {missing}; found {header}, "
                               f"expected {list(expected)}")


def _is_integer(value: str) -> bool:
    return bool(_INTEGER.fullmatch(value.strip()))


def _is_number_or_empty(value: str) -> bool:
    if not value.strip():
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_values(table: CsvTable, where: str, columns: Iterable[str], valid, problem: str) -> None:
    for column in columns:
        if column not in table.header:
            continue
        index = table.column(column)
        for record, line in zip(table.records, table.lines):
            if not valid(record[index]):
                raise CsvContractError(f"{where}: line {line}, field {column}: {record[index]!r} {problem}")
