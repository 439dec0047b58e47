"""The bad-input corpus: every kind of broken input the entry points meet, one table row each.

Each row names its kind, the entry point it goes through (ingest, CSV reader, score / validate
command, config validation) and the expected outcome: a clear error naming the file, line and field
(`error`), or a recorded `repaired` / `quarantined` decision with its ledger reason. Every ingest
also asserts the accounting invariant rows_in = kept + repaired + quarantined (images too).
docs/reliability.md lists the same table; a test keeps the two in step.
"""

from __future__ import annotations

import codecs
import re
import struct
import time
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from leukoflow import cli, images
from leukoflow.csvio import CsvContractError, read_csv_frame
from leukoflow.engine.config import ConfigError, validate_config
from leukoflow.ingest.contract import IngestError, run_into
from leukoflow.metric import TableReadError, read_csv_table
from tests.conftest import REPO
from tests.test_ingest import (
    IMAGE_SIZE, TEST_HEADER, TEST_ROWS, TRAIN_HEADER, TRAIN_ROWS, Dataset, jpeg_bytes, make_dataset, noise_image,
    outputs, write_csv,
)

INGEST, CSV_READER, SCORE, VALIDATE, CONFIG = "ingest", "CSV reader", "leukoflow score", "leukoflow validate", "config"
ERROR, REPAIRED, QUARANTINED, ACCEPTED = "error", "repaired", "quarantined", "accepted"


@dataclass
class Case:
    kind: str
    entry: str
    outcome: str  # error | repaired | quarantined | accepted
    expect: str  # regex of the error message, or the ledger reason code
    setup: Callable[..., object]
    options: dict = field(default_factory=dict)


# ---------------------------------------------------------------- builders of bad input

def train_text(ds: Dataset, text: str | bytes) -> None:
    (ds.train.write_bytes if isinstance(text, bytes) else ds.train.write_text)(text)


def write_test_text(ds: Dataset, text: str | bytes) -> None:
    (ds.test.write_bytes if isinstance(text, bytes) else ds.test.write_text)(text)


def train_row(*row: str) -> Callable[[Dataset], None]:
    return lambda ds: write_csv(ds.train, TRAIN_HEADER, [*TRAIN_ROWS, list(row)])


def write_test_row(*row: str) -> Callable[[Dataset], None]:
    return lambda ds: write_csv(ds.test, TEST_HEADER, [*TEST_ROWS, list(row)])


def image_bytes(name: str, data: bytes) -> Callable[[Dataset], None]:
    return lambda ds: (ds.images / name).write_bytes(data)


def image_saved(name: str, image: Image.Image, file_format: str) -> Callable[[Dataset], None]:
    return lambda ds: image.save(ds.images / name, format=file_format)


def gradient(dtype, high: float) -> np.ndarray:
    width, height = IMAGE_SIZE
    return np.linspace(0, high, width * height, dtype=np.float64).reshape(height, width).astype(dtype)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb)."""
    buffer = __import__("io").BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def every_line_with_trailing_comma(header_too: bool) -> Callable[[Dataset], None]:
    def build(ds: Dataset) -> None:
        lines = ds.train.read_text().splitlines()
        ds.train.write_text("\n".join([lines[0] + ("," if header_too else ""), *(line + "," for line in lines[1:])]) + "\n")
    return build


def renamed(old: str, new: str) -> Callable[[Dataset], None]:
    return lambda ds: (ds.images / old).rename(ds.images / new)


def nfd_named_file(ds: Dataset) -> None:
    name = unicodedata.normalize("NFC", "café.jpg")
    noise_image(9).save(ds.images / unicodedata.normalize("NFD", name), format="JPEG")
    write_csv(ds.train, TRAIN_HEADER, [*TRAIN_ROWS, [name, "1", "1", "9", "9", "LY"]])


def dangling_link(ds: Dataset) -> None:
    (ds.images / "e.jpg").symlink_to(ds.root / "nowhere.jpg")
    write_csv(ds.train, TRAIN_HEADER, [*TRAIN_ROWS, ["e.jpg", "1", "1", "9", "9", "LY"]])


def link_outside(ds: Dataset) -> None:
    noise_image(11).save(ds.root / "outside.jpg", format="JPEG")
    (ds.images / "e.jpg").symlink_to(ds.root / "outside.jpg")
    write_csv(ds.train, TRAIN_HEADER, [*TRAIN_ROWS, ["e.jpg", "1", "1", "9", "9", "LY"]])


def folder_named_like_image(ds: Dataset) -> None:
    (ds.images / "e.jpg").mkdir()
    write_csv(ds.train, TRAIN_HEADER, [*TRAIN_ROWS, ["e.jpg", "1", "1", "9", "9", "LY"]])


def every_class(code: str) -> Callable[[Dataset], None]:
    return lambda ds: write_csv(ds.train, TRAIN_HEADER, [[*row[:5], code] for row in TRAIN_ROWS])


HEADER = ",".join(TRAIN_HEADER) + "\n"
GOOD = "a.jpg,1,2,20,22,PNN\n"

INGEST_CASES = [
    # whole tables: a clear error naming file, line and field
    Case("train.csv missing a column", INGEST, ERROR, r"train\.csv: line 1: missing column\(s\) \['class'\]",
         lambda ds: train_text(ds, "NAME,x1,y1,x2,y2\na.jpg,1,2,3,4\n")),
    Case("test.csv missing a column", INGEST, ERROR, r"test\.csv: line 1: missing column\(s\) \['NAME'\]",
         lambda ds: write_test_text(ds, "trustii_id\n11\n")),
    Case("header only", INGEST, ERROR, r"train\.csv: header only", lambda ds: train_text(ds, HEADER)),
    Case("zero-byte CSV", INGEST, ERROR, r"test\.csv: zero-byte file", lambda ds: write_test_text(ds, "")),
    Case("blank lines only", INGEST, ERROR, r"test\.csv: line 1: no header line", lambda ds: write_test_text(ds, "\n\n")),
    Case("semicolon delimiter", INGEST, ERROR, r"train\.csv: line 1: .*delimited by ';'",
         lambda ds: train_text(ds, HEADER.replace(",", ";") + GOOD.replace(",", ";"))),
    Case("tab delimiter", INGEST, ERROR, r"test\.csv: line 1: .*delimited by '\\t'",
         lambda ds: write_test_text(ds, "trustii_id\tNAME\n11\tc.jpg\n")),
    Case("not UTF-8 (Latin-1 byte)", INGEST, ERROR, r"train\.csv: line 3, field 1: not UTF-8",
         lambda ds: train_text(ds, (HEADER + GOOD).encode() + "é.jpg,1,2,3,4,PNN\n".encode("latin-1"))),
    Case("UTF-16 with byte-order mark", INGEST, ERROR, r"train\.csv: line 1: UTF-16 text",
         lambda ds: train_text(ds, codecs.BOM_UTF16_LE + (HEADER + GOOD).encode("utf-16-le"))),
    Case("unterminated quote", INGEST, ERROR, r"train\.csv: line 3: not parsable as CSV: unterminated quote",
         lambda ds: train_text(ds, HEADER + GOOD + '"b.jpg,1,2,3,4,PNN\nc.jpg,1,2,3,4,LY\n')),
    Case("NUL byte in a NAME", INGEST, QUARANTINED, "unsafe_name", train_row("a\0.jpg", "1", "2", "20", "22", "LY")),
    Case("repeated column", INGEST, ERROR, r"train\.csv: line 1: column\(s\) \['class'\] appear more than once",
         lambda ds: train_text(ds, "NAME,x1,y1,x2,y2,class,class\na.jpg,1,2,3,4,PNN,PNN\n")),
    Case("missing CSV file", INGEST, ERROR, r"train\.csv: cannot read it", lambda ds: ds.train.unlink()),
    Case("missing image folder", INGEST, ERROR, r"image folder not found", lambda ds: ds.images.rename(ds.root / "x")),
    Case("no usable train row left", INGEST, ERROR, r"train\.csv: no usable row left: all 3 rows .*unknown_class x3",
         every_class("XX")),
    Case("no usable row left (trailing fields on some rows only)", INGEST, ERROR,
         r"no usable row left: all 3 rows .*field_count x3",
         lambda ds: train_text(ds, HEADER + "".join(",".join(r) + ",,\n" for r in TRAIN_ROWS))),
    # table-level repairs
    Case("UTF-8 byte-order mark", INGEST, ACCEPTED, "utf8_bom_removed",
         lambda ds: train_text(ds, codecs.BOM_UTF8 + ds.train.read_bytes())),
    Case("trailing comma on every row and the header", INGEST, REPAIRED, "trailing_empty_field",
         every_line_with_trailing_comma(header_too=True)),
    Case("trailing comma on every data row", INGEST, REPAIRED, "trailing_empty_field",
         every_line_with_trailing_comma(header_too=False)),
    Case("white space around fields", INGEST, REPAIRED, "whitespace_stripped",
         train_row(" a.jpg", "5", "2 ", "20", "22", "PNN ")),
    # rows
    Case("extra field on the first row", INGEST, QUARANTINED, "field_count",
         lambda ds: train_text(ds, HEADER + "a.jpg,1,2,20,22,PNN,x\n" + "b.jpg,3,4,30,31,LY\n")),
    Case("missing field on a row", INGEST, QUARANTINED, "field_count", train_row("a.jpg", "1", "2", "20", "22")),
    Case("NaN coordinate", INGEST, QUARANTINED, "bad_coordinate", train_row("a.jpg", "nan", "2", "20", "22", "LY")),
    Case("empty coordinate", INGEST, QUARANTINED, "bad_coordinate", train_row("a.jpg", "", "2", "20", "22", "LY")),
    Case("coordinate with unit ('12px')", INGEST, QUARANTINED, "bad_coordinate",
         train_row("a.jpg", "12px", "2", "20", "22", "LY")),
    Case("infinite coordinate", INGEST, QUARANTINED, "bad_coordinate", train_row("a.jpg", "1", "inf", "20", "22", "LY")),
    Case("unknown class", INGEST, QUARANTINED, "unknown_class", train_row("a.jpg", "1", "2", "20", "22", "XYZ")),
    Case("class in the wrong case", INGEST, QUARANTINED, "unknown_class", train_row("a.jpg", "1", "2", "20", "22", "pnn")),
    Case("empty class", INGEST, QUARANTINED, "unknown_class", train_row("a.jpg", "1", "2", "20", "22", "")),
    Case("duplicate row", INGEST, QUARANTINED, "duplicate_row", train_row(*TRAIN_ROWS[0])),
    Case("path traversal in NAME", INGEST, QUARANTINED, "unsafe_name", train_row("../a.jpg", "1", "2", "20", "22", "LY")),
    Case("absolute path in NAME", INGEST, QUARANTINED, "unsafe_name", train_row("/etc/passwd", "1", "2", "3", "4", "LY")),
    Case("empty NAME", INGEST, QUARANTINED, "unsafe_name", train_row("", "1", "2", "20", "22", "LY")),
    Case("control character in NAME", INGEST, QUARANTINED, "unsafe_name", train_row("a\x07.jpg", "1", "2", "3", "4", "LY")),
    Case("NAME 'NA' (a pandas missing value)", INGEST, QUARANTINED, "image_missing_file",
         write_test_row("13", "NA")),
    Case("non-integer trustii_id", INGEST, QUARANTINED, "bad_trustii_id", write_test_row("1.5", "c.jpg")),
    Case("trustii_id beyond int64", INGEST, QUARANTINED, "bad_trustii_id", write_test_row("99999999999999999999", "c.jpg")),
    Case("repeated trustii_id", INGEST, QUARANTINED, "duplicate_trustii_id", write_test_row("11", "d.jpg")),
    # images
    Case("referenced file missing", INGEST, QUARANTINED, "missing_file", renamed("b.jpg", "zz.jpg")),
    Case("file name differs in case", INGEST, QUARANTINED, "missing_file", renamed("b.jpg", "B.JPG"),
         {"detail": "differs only in case"}),
    Case("NAME in NFC, file in NFD", INGEST, QUARANTINED, "missing_file", nfd_named_file,
         {"detail": r"differs only in Unicode normalization \(NAME is NFC, the file name is NFD\)"}),
    Case("dangling symlink", INGEST, QUARANTINED, "missing_file", dangling_link),
    Case("folder named like an image", INGEST, QUARANTINED, "missing_file", folder_named_like_image),
    Case("symlink to a file outside the folder", INGEST, ACCEPTED, "", link_outside),
    Case("zero-byte image", INGEST, QUARANTINED, "zero_size", image_bytes("b.jpg", b"")),
    Case("text file named .jpg", INGEST, QUARANTINED, "unreadable", image_bytes("b.jpg", b"not an image\n"),
         {"detail": "unreadable image"}),
    Case("JPEG header then garbage", INGEST, QUARANTINED, "unreadable",
         image_bytes("b.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 40)),
    Case("decompression bomb (40000 x 40000 header)", INGEST, QUARANTINED, "unreadable",
         image_bytes("b.jpg", png_claiming(40000, 40000)), {"detail": "DecompressionBomb"}),
    Case("file over the size limit", INGEST, QUARANTINED, "too_large",
         lambda ds: (ds.images / "c.jpg").write_bytes(jpeg_bytes(noise_image(2)) + bytes(2 << 20)),
         {"max_image_mb": 1, "detail": "over the limit"}),
    Case("truncated JPEG", INGEST, REPAIRED, "truncated_jpeg",
         lambda ds: (ds.images / "a.jpg").write_bytes(jpeg_bytes(noise_image(7))[:1200])),
    Case("greyscale image", INGEST, REPAIRED, "mode_L", image_saved("c.jpg", noise_image(3, "L"), "JPEG")),
    Case("CMYK image", INGEST, REPAIRED, "mode_CMYK", image_saved("c.jpg", noise_image(3, "CMYK"), "JPEG")),
    Case("RGBA image", INGEST, REPAIRED, "mode_RGBA", image_saved("c.jpg", noise_image(3, "RGBA"), "PNG")),
    Case("palette image", INGEST, REPAIRED, "mode_P", image_saved("c.jpg", noise_image(3, "P"), "PNG")),
    Case("16-bit greyscale PNG", INGEST, REPAIRED, "high_bit_depth",
         image_saved("c.jpg", Image.fromarray(gradient(np.uint16, 65535)), "PNG"), {"mean": 127.5}),
    Case("32-bit integer TIFF", INGEST, REPAIRED, "high_bit_depth",
         image_saved("c.jpg", Image.fromarray(gradient(np.int32, 65535)), "TIFF"), {"mean": 127.5}),
    Case("32-bit float TIFF (0-1)", INGEST, REPAIRED, "high_bit_depth",
         image_saved("c.jpg", Image.fromarray(gradient(np.float32, 1.0)), "TIFF"), {"mean": 127.5}),
    Case("NAME in train and test", INGEST, QUARANTINED, "name_in_both_splits", write_test_row("13", "a.jpg")),
    Case("unreferenced image file", INGEST, QUARANTINED, "unreferenced_image",
         lambda ds: noise_image(5).save(ds.images / "stray.jpg", format="JPEG")),
]


def _ingest(ds: Dataset, max_image_mb: float = 64) -> dict:
    return run_into(ds.out, train_csv=ds.train, test_csv=ds.test, images_dir=ds.images, threads=1, chunksize=8,
                    decode_reduction=1, phash_reducing_gap=None, max_image_mb=max_image_mb)


def _assert_accounting(summary: dict, ds: Dataset) -> None:
    assert summary["rows_in"] == summary["rows_kept"] + summary["rows_repaired"] + summary["rows_quarantined"]
    assert summary["images_in"] == summary["images_kept"] + summary["images_repaired"] + summary["images_quarantined"]
    out = outputs(ds)
    assert summary["rows_in"] == len(out["boxes"]) + len(out["test"])


@pytest.mark.parametrize("case", INGEST_CASES, ids=[case.kind for case in INGEST_CASES])
def test_ingest_meets_bad_input(tmp_path, case):
    ds = make_dataset(tmp_path)
    case.setup(ds)
    options = dict(case.options)
    if case.outcome == ERROR:
        with pytest.raises(IngestError, match=case.expect):
            _ingest(ds, options.get("max_image_mb", 64))
        return
    summary = _ingest(ds, options.get("max_image_mb", 64))
    _assert_accounting(summary, ds)
    ledger = outputs(ds)["ledger"]
    if case.outcome == ACCEPTED:
        assert summary["rows_quarantined"] == 0 and summary["images_quarantined"] == 0
        if case.expect:
            assert case.expect in summary["csv_repairs"]["train.csv"]
        return
    entries = ledger[ledger["reason"] == case.expect]
    assert len(entries), ledger.to_string()
    assert set(entries["action"]) == {case.outcome}
    if "detail" in options:
        assert entries["detail"].str.contains(options["detail"]).all(), entries["detail"].tolist()
    if "mean" in options:
        image = outputs(ds)["images"].loc["c.jpg"]
        assert image.pixel_mean == pytest.approx(options["mean"], abs=0.6)  # scaled, not clipped to 255
        assert image.pixel_std > 50


# ---------------------------------------------------------------- score / validate / CSV reader

TRUTH = "trustii_id,NAME,x1,y1,x2,y2,class\n1,a.jpg,0,0,10,10,LY\n2,a.jpg,20,20,40,40,PNN\n"
SUBMISSION = "trustii_id,NAME,x1,y1,x2,y2,class\n1,a.jpg,0,0,10,10,LY\n2,a.jpg,20,20,40,40,PNN\n"
TEST = "trustii_id,NAME\n1,a.jpg\n2,a.jpg\n"


def with_trailing_commas(text: str) -> str:
    return "".join(line + ",\n" for line in text.splitlines())


# (kind, command, truth-or-test text, submission text, expected exit status, regex of stderr or stdout)
COMMAND_CASES = [
    ("score: non-integer trustii_id", "score", TRUTH, SUBMISSION.replace("\n2,", "\n2x,"), 2,
     r"submission file .*: line 3, field trustii_id: '2x' is not an integer"),
    ("score: trustii_id in the truth not an integer", "score", TRUTH.replace("\n1,", "\n1.0,"), SUBMISSION, 2,
     r"truth file .*: line 2, field trustii_id: '1.0' is not an integer"),
    ("score: trailing comma on every submission row", "score", TRUTH, with_trailing_commas(SUBMISSION), 0,
     r"score:\s+1\.000000"),
    ("score: truth with an empty class", "score", TRUTH.replace(",PNN", ","), SUBMISSION, 2,
     r"truth file .*: line 3, field class: '' is empty"),
    ("score: submission missing a column", "score", TRUTH, SUBMISSION.replace(",class", "").replace(",LY", "").replace(",PNN", ""), 2,
     r"submission file .* lacks column\(s\) \['class'\]"),
    ("score: zero-byte truth", "score", "", SUBMISSION, 2, r"truth file .*: zero-byte file"),
    ("score: semicolon submission", "score", TRUTH, SUBMISSION.replace(",", ";"), 2, r"delimited by ';'"),
    ("score: extra field on the first submission row", "score", TRUTH, SUBMISSION.replace("LY\n", "LY,0.9\n", 1), 2,
     r"submission file .*: line 2: 8 fields, the header has 7"),
    ("score: submission not UTF-8", "score", TRUTH, SUBMISSION.replace("a.jpg", "\udce9.jpg", 1), 2,
     r"submission file .*: line 2, field 2: not UTF-8"),
    ("score: non-numeric coordinate", "score", TRUTH, SUBMISSION.replace(",0,0,10", ",0px,0,10"), 2,
     r"submission file .*: line 2, field x1: '0px' is not a number"),
    ("score: unterminated quote in the truth", "score", TRUTH + '3,"b.jpg,1,1,2,2,LY\n', SUBMISSION, 2,
     r"truth file .*: line 4: not parsable as CSV: unterminated quote"),
    ("validate: header-only test table", "validate", "trustii_id,NAME\n", SUBMISSION, 2, r"test file .*: header only"),
    ("validate: non-integer trustii_id", "validate", TEST, SUBMISSION.replace("\n1,", "\nabc,"), 2,
     r"line 2, field trustii_id: 'abc' is not an integer"),
    ("validate: trailing comma on every row", "validate", with_trailing_commas(TEST), with_trailing_commas(SUBMISSION), 0,
     r"OK: .* 2 test ids"),
    ("validate: missing file", "validate", None, SUBMISSION, 2, r"test file .*: cannot read it"),
    ("validate: test table without NAME column", "validate", "trustii_id\n1\n", SUBMISSION, 2,
     r"test file .*: line 1: missing column\(s\) \['NAME'\]"),
]


def _write(path: Path, text: str | None) -> Path:
    if text is not None:
        path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return path


@pytest.mark.parametrize(("kind", "command", "first", "submission", "status", "message"), COMMAND_CASES,
                         ids=[case[0] for case in COMMAND_CASES])
def test_score_and_validate_meet_bad_input(tmp_path, capsys, kind, command, first, submission, status, message):
    first_path = _write(tmp_path / ("truth.csv" if command == "score" else "test.csv"), first)
    submission_path = _write(tmp_path / "submission.csv", submission)
    flag = "--truth" if command == "score" else "--test"
    assert cli.main([command, flag, str(first_path), "--submission", str(submission_path)]) == status
    captured = capsys.readouterr()
    assert re.search(message, captured.err + captured.out), captured.err + captured.out


READER_CASES = [
    ("expected counts missing a column", "expected counts", "trustii_id,name\n1,a.jpg\n",
     r"expected counts file .*: line 1: missing column\(s\) \['NAME'\]"),
    ("expected counts with an empty NAME", "expected counts", "trustii_id,NAME\n1,\n",
     r"line 2, field NAME: '' is empty"),
    ("UTF-32 text", "test", codecs.BOM_UTF32_LE.decode("latin-1") + "x", r"UTF-32 text"),
]


@pytest.mark.parametrize(("kind", "role", "text", "message"), READER_CASES, ids=[case[0] for case in READER_CASES])
def test_csv_reader_meets_bad_input(tmp_path, kind, role, text, message):
    path = tmp_path / "table.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(TableReadError, match=message):
        read_csv_table(path, role=role)


def test_well_formed_csv_reads_as_plain_pandas(tmp_path):
    path = _write(tmp_path / "s.csv", SUBMISSION + "3,,,,,,\n")
    frame = read_csv_frame(path, (), role="submission")
    pd.testing.assert_frame_equal(frame, pd.read_csv(path))
    with pytest.raises(CsvContractError, match="field count|fields"):
        _write(path, SUBMISSION + "3,a.jpg\n")
        read_csv_frame(path, (), role="submission")


# ---------------------------------------------------------------- config

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SCHEMA = REPO / "config" / "schema.yaml"
BOMB = "seed: [&a [l,l,l,l,l,l,l,l,l], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
       "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], " \
       "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]"

CONFIG_CASES = [
    ("NaN holdout fraction", "data:\n  holdout_fraction: .nan\n", r"data\.holdout_fraction: nan is not a finite number"),
    ("infinite learning rate", "detectors:\n  det1:\n    train:\n      lr0: .inf\n",
     r"detectors\.det1\.train\.lr0: inf is not a finite number"),
    ("negative infinity", "ingest:\n  max_image_mb: -.inf\n", r"ingest\.max_image_mb: -inf is not a finite number"),
    ("YAML alias bomb", BOMB, r"seed\.\d+ stands for more than 100000 values"),
    ("value of the wrong type, huge", "seed: [" + ",".join(["1"] * 5000) + "]\n", r"seed: \[1, 1.*\.\.\. \(\d+ characters\)"),
    ("unknown key", "ingest:\n  max_image_gb: 3\n", r"ingest: unknown key\(s\) 'max_image_gb'"),
]


def _merged(base: dict, override: dict) -> dict:
    return {**base, **{k: _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in override.items()}}


@pytest.mark.parametrize(("kind", "text", "message"), CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_config_meets_bad_input(kind, text, message):
    config = _merged(DEFAULT, yaml.safe_load(text))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as raised:
        validate_config(config, SCHEMA)
    if "bomb" in kind:  # refused before anything walks the expansion (it used to take minutes)
        assert time.perf_counter() - started < 1.0
    assert len(str(raised.value)) < 2000


# ---------------------------------------------------------------- the decoder, whatever plugins are loaded

def test_unreadable_image_whatever_plugin_is_registered(monkeypatch):
    def plugin_that_needs_a_missing_module(fp, prefix=None):
        raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(Image, "OPEN", {"HEIF": (plugin_that_needs_a_missing_module, None), **Image.OPEN})
    monkeypatch.setattr(Image, "ID", ["HEIF", *Image.ID])
    for data in (b"", b"GIF89a not really"):
        with pytest.raises(images.UnreadableImage, match="^unreadable image"):
            images.decode_image(data)


# ---------------------------------------------------------------- the corpus stays documented

ALL_KINDS = ([(c.kind, c.entry, c.outcome) for c in INGEST_CASES]
             + [(c[0], SCORE if c[1] == "score" else VALIDATE, ERROR if c[4] else ACCEPTED) for c in COMMAND_CASES]
             + [(c[0], CSV_READER, ERROR) for c in READER_CASES]
             + [(c[0], CONFIG, ERROR) for c in CONFIG_CASES])


def test_corpus_is_large_and_documented():
    assert len(ALL_KINDS) >= 45
    text = (REPO / "docs" / "reliability.md").read_text()
    assert f"{len(ALL_KINDS)} kinds of bad input" in text
    missing = [kind for kind, _, _ in ALL_KINDS if f"| {kind} |" not in text]
    assert not missing, missing
