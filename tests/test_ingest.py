"""Tests of leukoflow.ingest.contract (and leukoflow.ledger): one tiny dataset per bad-input kind, built with PIL."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from leukoflow import tables
from leukoflow.constants import TEST_COLUMNS, TRAIN_COLUMNS
from leukoflow.ingest.contract import (
    IngestError, check_test_rows, check_train_rows, parse_decimal, read_csv_table, referenced_images, rgb_mean_std,
    run_into, unsafe_name_problem,
)
from leukoflow.ledger import ACTION_QUARANTINED, LedgerBuilder

try:
    from tests.conftest import shared_path
except ImportError:  # conftest not importable as a module: same helper, locally
    SHARED = Path(__file__).resolve().parents[2] / "shared"

    def shared_path(*parts: str) -> Path:
        path = SHARED.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"reference data {path} is not present beside the repository")
        return path


TRAIN_HEADER = ["NAME", "x1", "y1", "x2", "y2", "class"]
TEST_HEADER = ["trustii_id", "NAME"]
TRAIN_ROWS = [
    ["a.jpg", "1", "2", "20", "22", "PNN"],
    ["b.jpg", "3", "4", "30", "31", "LY"],
    ["b.jpg", "0", "0", "10", "10", "EO"],
]
TEST_ROWS = [["11", "c.jpg"], ["12", "d.jpg"]]
IMAGE_SIZE = (48, 40)


@dataclass
class Dataset:
    root: Path
    train: Path
    test: Path
    images: Path
    out: Path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def noise_image(seed: int, mode: str = "RGB", size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """Random RGB pixels (so JPEGs have real scan data), converted to `mode`."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_dataset(root: Path, train_rows=TRAIN_ROWS, test_rows=TEST_ROWS, names=("a.jpg", "b.jpg", "c.jpg", "d.jpg")) -> Dataset:
    images = root / "images"
    images.mkdir(parents=True)
    for seed, name in enumerate(names):
        noise_image(seed).save(images / name, format="JPEG", quality=90)
    return Dataset(root, write_csv(root / "train.csv", TRAIN_HEADER, train_rows),
                   write_csv(root / "test.csv", TEST_HEADER, test_rows), images, root / "out")


def ingest(train: Path, test: Path, images: Path, out: Path, *, workers: int = 1, chunksize: int = 32, phash_reducing_gap=None,
           decode_reduction: int = 1, max_image_mb: float = 64) -> dict:
    """The rule entry with the workflow's file names under `out`."""
    return run_into(out, train_csv=train, test_csv=test, images_dir=images, threads=workers, chunksize=chunksize,
                    decode_reduction=decode_reduction, phash_reducing_gap=phash_reducing_gap, max_image_mb=max_image_mb)


def run(dataset: Dataset, **options) -> dict:
    return ingest(dataset.train, dataset.test, dataset.images, dataset.out, **options)


def outputs(dataset: Dataset) -> dict[str, pd.DataFrame]:
    return {
        "images": tables.read_table(dataset.out / "images.parquet", tables.INGEST_IMAGES).set_index("name"),
        "boxes": tables.read_table(dataset.out / "boxes.parquet", tables.INGEST_BOXES),
        "test": tables.read_table(dataset.out / "test.parquet", tables.INGEST_TEST),
        "ledger": tables.read_table(dataset.out / "ledger.csv", tables.LEDGER),
    }


def folder_checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path)


# ---------------------------------------------------------------- clean input

def test_clean_dataset_is_kept_whole_and_measured(dataset):
    summary = run(dataset)
    assert (summary["rows_in"], summary["rows_kept"], summary["images_in"], summary["images_kept"]) == (5, 5, 4, 4)
    assert summary["rows_quarantined"] == summary["images_quarantined"] == summary["images_unreferenced"] == 0
    out = outputs(dataset)
    assert out["ledger"].empty
    image = out["images"].loc["a.jpg"]
    decoded = Image.open(dataset.images / "a.jpg").convert("RGB")
    pixels = np.asarray(decoded, dtype=np.float64)
    assert (image.width, image.height, image.channels, image["mode"]) == (*IMAGE_SIZE, 3, "RGB")
    assert image.file_sha256 == hashlib.sha256((dataset.images / "a.jpg").read_bytes()).hexdigest()
    assert image.pixel_mean == pytest.approx(pixels.mean(), abs=1e-9)
    assert image.pixel_std == pytest.approx(pixels.std(), abs=1e-9)
    assert image.phash == str(imagehash.phash(decoded)) and len(image.phash) == 16
    assert image.path == str(dataset.images / "a.jpg")
    assert list(out["images"]["split"]) == ["train", "train", "test", "test"]
    assert list(out["boxes"]["class_idx"]) == [0, 1, 3]
    assert list(out["test"]["trustii_id"]) == [11, 12]
    assert json.loads(json.dumps(summary)) == summary  # the rule writes it as summary.json


# ---------------------------------------------------------------- structurally unusable tables

@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("train", "NAME,x1,y1,x2,y2\na.jpg,1,2,3,4\n", r"train\.csv: line 1: missing column\(s\) \['class'\]"),  # missing column
        ("test", "trustii_id\n11\n", r"test\.csv: line 1: missing column\(s\) \['NAME'\]"),  # missing column, test
        ("train", "NAME,x1,y1,x2,y2,class\n", r"train\.csv: header only"),  # header only
        ("test", "", r"test\.csv: zero-byte file"),  # nothing at all
        ("train", "NAME;x1;y1;x2;y2;class\na.jpg;1;2;3;4;PNN\n", r"train\.csv: line 1: .*delimited by ';'"),  # semicolons
        ("test", "trustii_id\tNAME\n11\tc.jpg\n", r"test\.csv: line 1: .*delimited by '\\t'"),  # tabs
        ("train", 'NAME,x1,y1,x2,y2,class\n"a.jpg,1,2,3,4,PNN\n', r"train\.csv: line \d+: not parsable as CSV"),  # open quote
        ("train", "NAME,x1,y1,x2,y2,class,class\na.jpg,1,2,3,4,PNN,PNN\n", r"appear more than once"),  # repeated column
    ],
)
def test_unusable_table_stops_with_file_line_and_field(dataset, which, content, message):
    (dataset.train if which == "train" else dataset.test).write_text(content)
    with pytest.raises(IngestError, match=message):
        run(dataset)


def test_table_not_utf8_stops_with_line(dataset):
    dataset.train.write_bytes(b"NAME,x1,y1,x2,y2,class\na.jpg,1,2,3,4,PNN\n\xff\xfe.jpg,1,2,3,4,PNN\n")
    with pytest.raises(IngestError, match=r"train\.csv: line 3, field 1: not UTF-8"):
        run(dataset)


def test_missing_table_and_folder_stop(dataset, tmp_path):
    with pytest.raises(IngestError, match="nothing.csv: cannot read"):
        ingest(tmp_path / "nothing.csv", dataset.test, dataset.images, dataset.out)
    with pytest.raises(IngestError, match="image folder not found"):
        ingest(dataset.train, dataset.test, tmp_path / "no_images", dataset.out)


def test_output_inside_image_folder_is_refused(dataset):
    with pytest.raises(IngestError, match="inside the image folder"):
        ingest(dataset.train, dataset.test, dataset.images, dataset.images / "out")


# ---------------------------------------------------------------- row-level quarantine

@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (["a.jpg", "1", "2", "20", "22", "pnn"], "class", "unknown_class"),  # wrong case
        (["a.jpg", "1", "2", "20", "22", "Lysée"], "class", "unknown_class"),  # accent
        (["a.jpg", "1", "2", "20", "22", ""], "class", "unknown_class"),  # empty class
        (["a.jpg", "nan", "2", "20", "22", "PNN"], "x1", "bad_coordinate"),  # NaN
        (["a.jpg", "1", "", "20", "22", "PNN"], "y1", "bad_coordinate"),  # empty
        (["a.jpg", "1", "2", "12px", "22", "PNN"], "x2", "bad_coordinate"),  # unit suffix
        (["a.jpg", "1", "2", "20", "inf", "PNN"], "y2", "bad_coordinate"),  # infinite
        (["../a.jpg", "1", "2", "20", "22", "PNN"], "NAME", "unsafe_name"),  # parent directory
        (["/abs.jpg", "1", "2", "20", "22", "PNN"], "NAME", "unsafe_name"),  # absolute path
        (["a/b.jpg", "1", "2", "20", "22", "PNN"], "NAME", "unsafe_name"),  # sub-folder
        (["a\\b.jpg", "1", "2", "20", "22", "PNN"], "NAME", "unsafe_name"),  # Windows separator
        (["", "1", "2", "20", "22", "PNN"], "NAME", "unsafe_name"),  # empty NAME
        (["a.jpg", "1", "2", "20", "22"], "row", "field_count"),  # a field short
    ],
)
def test_bad_train_row_is_quarantined_with_reason(tmp_path, row, field, reason):
    dataset = make_dataset(tmp_path, train_rows=[*TRAIN_ROWS, row])
    summary = run(dataset)
    out = outputs(dataset)
    bad = out["boxes"].iloc[-1]
    assert (bad.row, bad.status) == (3, "quarantined") and reason in bad.reason.split(";")
    entry = out["ledger"].query("table == 'train.csv' and row == 3 and reason == @reason")
    assert list(entry["field"]) == [field] and list(entry["action"]) == [ACTION_QUARANTINED]
    assert summary["rows_quarantined"] == 1 and summary["rows_kept"] == 5
    assert summary["reasons"]["train.csv"][reason] == 1


def test_float_coordinates_are_kept_as_given(tmp_path):
    dataset = make_dataset(tmp_path, train_rows=[["a.jpg", "-3", "2.5", "1e1", "+22", "PNN"]])
    run(dataset)
    box = outputs(dataset)["boxes"].iloc[0]
    assert (box.x1, box.y1, box.x2, box.y2, box.status) == (-3.0, 2.5, 10.0, 22.0, "ok")


def test_white_space_is_stripped_as_a_repair(tmp_path):
    dataset = make_dataset(tmp_path, train_rows=[["a.jpg ", "1", "2", "20", "22", " PNN"]])
    summary = run(dataset)
    box = outputs(dataset)["boxes"].iloc[0]
    assert (box["name"], box.label, box.status, box.reason) == ("a.jpg", "PNN", "repaired", "whitespace_stripped")
    assert summary["rows_repaired"] == 1


def test_repeated_train_row_keeps_the_first(tmp_path):
    dataset = make_dataset(tmp_path, train_rows=[*TRAIN_ROWS, ["a.jpg", "1.0", "2", "20", "22", "PNN"]])
    run(dataset)
    boxes = outputs(dataset)["boxes"]
    assert list(boxes["status"]) == ["ok", "ok", "ok", "quarantined"] and boxes["reason"].iloc[-1] == "duplicate_row"


def test_duplicate_trustii_id_keeps_the_first(tmp_path):
    dataset = make_dataset(tmp_path, test_rows=[["11", "c.jpg"], ["12", "d.jpg"], ["11", "d.jpg"], ["x", "c.jpg"]])
    summary = run(dataset)
    test = outputs(dataset)["test"]
    assert list(test["status"]) == ["ok", "ok", "quarantined", "quarantined"]
    assert list(test["reason"]) == ["", "", "duplicate_trustii_id", "bad_trustii_id"]
    assert list(test["trustii_id"]) == [11, 12, 11, -1]
    assert summary["reasons"]["test.csv"] == {"bad_trustii_id": 1, "duplicate_trustii_id": 1}


def test_name_in_both_splits_quarantines_image_and_rows(tmp_path):
    dataset = make_dataset(tmp_path, test_rows=[*TEST_ROWS, ["13", "a.jpg"]])
    run(dataset)
    out = outputs(dataset)
    assert out["images"].loc["a.jpg", "reason"] == "name_in_both_splits"
    assert out["boxes"]["reason"].iloc[0] == out["test"]["reason"].iloc[-1] == "image_name_in_both_splits"


# ---------------------------------------------------------------- image-level quarantine and repair

def test_missing_image_file_quarantines_image_and_rows(tmp_path):
    dataset = make_dataset(tmp_path, train_rows=[*TRAIN_ROWS, ["A.JPG", "1", "2", "3", "4", "MO"]])
    summary = run(dataset)
    out = outputs(dataset)
    assert out["images"].loc["A.JPG", "status"] == "quarantined"
    assert out["images"].loc["A.JPG", "reason"] == "missing_file"
    assert out["boxes"]["reason"].iloc[-1] == "image_missing_file"
    detail = out["ledger"].query("table == 'images' and name == 'A.JPG'")["detail"].iloc[0]
    assert "differs only in case" in detail
    assert summary["images_quarantined"] == 1 and summary["rows_quarantined"] == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not an image", "unreadable"),  # text named .jpg
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "unreadable"),  # JPEG magic, garbage after
        (b"", "zero_size"),  # empty file
    ],
)
def test_undecodable_image_is_quarantined(dataset, content, reason):
    (dataset.images / "b.jpg").write_bytes(content)
    summary = run(dataset)
    out = outputs(dataset)
    image = out["images"].loc["b.jpg"]
    assert (image.status, image.reason, image.width, image.phash) == ("quarantined", reason, 0, "")
    assert list(out["boxes"]["reason"]) == ["", f"image_{reason}", f"image_{reason}"]
    assert summary["rows_quarantined"] == 2 and summary["images_quarantined"] == 1


def test_truncated_jpeg_is_repaired_into_a_working_copy(dataset):
    data = jpeg_bytes(noise_image(7))
    (dataset.images / "a.jpg").write_bytes(data[: len(data) * 2 // 3])
    summary = run(dataset)
    out = outputs(dataset)
    image = out["images"].loc["a.jpg"]
    assert (image.status, image.reason) == ("repaired", "truncated_jpeg")
    assert Path(image.path).parent == dataset.out / "repaired"
    copy = Image.open(image.path)
    assert copy.size == IMAGE_SIZE and copy.mode == "RGB"
    assert str(imagehash.phash(copy)) == image.phash
    assert out["boxes"]["status"].iloc[0] == "repaired" and out["boxes"]["reason"].iloc[0] == "image_truncated_jpeg"
    assert summary["images_repaired"] == 1 and summary["rows_repaired"] == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the switch did not leak


@pytest.mark.parametrize(
    ("mode", "file_format", "channels"),
    [
        ("L", "JPEG", 1),  # greyscale
        ("CMYK", "JPEG", 4),  # print colours
        ("RGBA", "PNG", 4),  # alpha channel
        ("P", "PNG", 1),  # palette
    ],
)
def test_non_rgb_image_gets_an_rgb_working_copy(dataset, mode, file_format, channels):
    noise_image(3, mode).save(dataset.images / "c.jpg", format=file_format)
    summary = run(dataset)
    image = outputs(dataset)["images"].loc["c.jpg"]
    assert (image.status, image.reason, image["mode"], image.channels) == ("repaired", f"mode_{mode}", mode, channels)
    copy = Image.open(image.path)
    assert copy.mode == "RGB" and np.asarray(copy, dtype=np.float64).mean() == pytest.approx(image.pixel_mean)
    assert summary["reasons"]["images"] == {f"mode_{mode}": 1}
    assert summary["reasons"]["test.csv"] == {f"image_mode_{mode}": 1}


def test_unreferenced_image_is_listed_not_counted_as_row(dataset):
    noise_image(9).save(dataset.images / "extra.jpg")
    summary = run(dataset)
    out = outputs(dataset)
    assert summary["images_unreferenced"] == 1 and summary["images_in"] == 4 and summary["rows_in"] == 5
    entry = out["ledger"].query("reason == 'unreferenced_image'")
    assert list(entry["name"]) == ["extra.jpg"] and list(entry["row"]) == [-1]
    assert "extra.jpg" not in out["images"].index


# ---------------------------------------------------------------- invariants

def many_defects(root: Path) -> Dataset:
    """Every kind of defect at once, for the invariants."""
    train_rows = [*TRAIN_ROWS, ["a.jpg", "x", "2", "3", "4", "pnn"], ["gone.jpg", "1", "2", "3", "4", "BA"],
                  ["../a.jpg", "1", "2", "3", "4", "PNN"], ["e.jpg", "1", "2", "3", "4", "SS"]]
    test_rows = [*TEST_ROWS, ["12", "c.jpg"], ["13", "f.jpg"]]
    dataset = make_dataset(root, train_rows, test_rows)
    data = jpeg_bytes(noise_image(5))
    (dataset.images / "e.jpg").write_bytes(data[: len(data) // 2])
    noise_image(6, "L").save(dataset.images / "f.jpg", format="JPEG")
    (dataset.images / "d.jpg").write_bytes(b"broken")
    noise_image(8).save(dataset.images / "lonely.jpg")
    return dataset


def test_every_row_and_image_is_accounted_for(tmp_path):
    dataset = many_defects(tmp_path)
    summary = run(dataset)
    out = outputs(dataset)
    for prefix in ("rows", "images"):
        assert summary[f"{prefix}_in"] == sum(summary[f"{prefix}_{k}"] for k in ("kept", "repaired", "quarantined"))
    assert summary["rows_in"] == len(out["boxes"]) + len(out["test"]) == 7 + 4
    logged = set(zip(out["ledger"]["table"], out["ledger"]["row"]))
    for table, frame in (("train.csv", out["boxes"]), ("test.csv", out["test"])):
        flagged = frame.loc[frame["status"] != "ok", "row"]
        assert all((table, row) in logged for row in flagged)  # nothing changed without a ledger line
    assert summary["images_unreferenced"] == 1


def test_input_folder_is_never_modified(tmp_path):
    dataset = many_defects(tmp_path)
    before = folder_checksums(dataset.root)
    run(dataset)
    after = {key: value for key, value in folder_checksums(dataset.root).items() if not key.startswith("out/")}
    assert after == before


def test_two_runs_write_identical_bytes(tmp_path):
    dataset = many_defects(tmp_path)
    run(dataset)
    first = folder_checksums(dataset.out)
    shutil.rmtree(dataset.out)
    run(dataset)
    assert folder_checksums(dataset.out) == first


def test_two_workers_write_the_same_bytes(tmp_path):
    dataset = many_defects(tmp_path)
    run(dataset, workers=1)
    one = folder_checksums(dataset.out)
    shutil.rmtree(dataset.out)
    run(dataset, workers=2, chunksize=1)
    assert folder_checksums(dataset.out) == one


# ---------------------------------------------------------------- helpers and ledger

@pytest.mark.parametrize(
    ("name", "safe"),
    [("a.jpg", True), ("00080027-c.jpg", True), ("", False), ("..", False), ("../x.jpg", False),
     ("/abs.jpg", False), ("a/b.jpg", False), ("a\\b.jpg", False), ("a\nb.jpg", False)],
)
def test_unsafe_name_problem(name, safe):
    assert (unsafe_name_problem(name) == "") is safe


@pytest.mark.parametrize(
    ("text", "value"),
    [("12", 12.0), ("-3.5", -3.5), ("1e2", 100.0), (".5", 0.5), ("nan", None), ("inf", None), ("1_0", None),
     ("", None), ("0x10", None)],
)
def test_parse_decimal(text, value):
    parsed = parse_decimal(text)
    assert np.isnan(parsed) if value is None else parsed == value


def test_ledger_builder_round_trip_and_rejections(tmp_path):
    ledger = LedgerBuilder()
    tables.write_table(ledger.to_frame(), tmp_path / "empty.csv", tables.LEDGER)  # empty case
    assert tables.read_table(tmp_path / "empty.csv", tables.LEDGER).empty
    ledger.add("ingest", "train.csv", 4, "a.jpg", "class", "quarantined", "unknown_class", "'pnn', with comma")
    ledger.add("ingest", "images", -1, "b.jpg", "file", "repaired", "truncated_jpeg")
    tables.write_table(ledger.to_frame(), tmp_path / "ledger.csv", tables.LEDGER)
    back = tables.read_table(tmp_path / "ledger.csv", tables.LEDGER)
    pd.testing.assert_frame_equal(back, ledger.to_frame())
    assert ledger.reason_counts() == {"images": {"truncated_jpeg": 1}, "train.csv": {"unknown_class": 1}}
    with pytest.raises(ValueError, match="action"):
        ledger.add("ingest", "images", -1, "b.jpg", "file", "dropped", "x")
    with pytest.raises(ValueError, match="reason"):
        ledger.add("ingest", "images", -1, "b.jpg", "file", "removed", "a;b")


# ---------------------------------------------------------------- real smears

def test_bccd_images_ingest_without_quarantine(tmp_path):
    images = shared_path("data", "bccd", "images")
    rows = list(csv.reader(shared_path("data", "bccd", "train.csv").open()))
    names = sorted({row[0] for row in rows[1:]})
    test_names = set(names[-20:])  # BCCD has no test.csv: the last 20 images play that part
    train = write_csv(tmp_path / "train.csv", rows[0], [row for row in rows[1:] if row[0] not in test_names])
    test = write_csv(tmp_path / "test.csv", TEST_HEADER, [[str(i), name] for i, name in enumerate(sorted(test_names))])
    summary = ingest(train, test, images, tmp_path / "out", workers=2)
    assert summary["images_in"] == summary["images_kept"] == len(names)
    assert summary["rows_quarantined"] == summary["images_quarantined"] == summary["images_unreferenced"] == 0
    frame = tables.read_table(tmp_path / "out" / "images.parquet", tables.INGEST_IMAGES)
    assert frame["width"].between(100, 4000).all() and frame["height"].between(100, 4000).all()
    assert frame["pixel_mean"].between(20, 250).all() and (frame["pixel_std"] > 1).all()
    assert frame["phash"].str.fullmatch(r"[0-9a-f]{16}").all()


def test_faster_phash_option_stays_a_close_16_digit_hash(dataset):
    run(dataset, phash_reducing_gap=2.0)
    fast = outputs(dataset)["images"]["phash"]
    exact = {name: imagehash.phash(Image.open(dataset.images / name).convert("RGB")) for name in fast.index}
    for name, text in fast.items():
        assert len(text) == 16 and imagehash.hex_to_hash(text) - exact[name] <= 8


def test_each_repeated_box_names_the_first_row_of_its_key_and_quarantined_rows_are_no_first(tmp_path):
    rows = [["a.jpg", "1", "2", "20", "22", "PNN"],  # 0
            ["a.jpg", "1", "2", "20", "22", "XX"],  # 1: unknown class, quarantined: never a first copy
            ["b.jpg", "1", "2", "20", "22", "PNN"],  # 2: another image
            ["a.jpg", "1.0", "2", "20", "22", "LY"],  # 3: another class
            ["a.jpg", "1", "2", "20", "22", "XX"],  # 4: quarantined, unknown class
            ["a.jpg", "1.0", "2.00", "20", "22", "PNN"],  # 5: repeats 0
            ["b.jpg", "1", "2", "20", "22", "PNN"],  # 6: repeats 2
            ["a.jpg", "1", "2", "20", "22", "PNN"],  # 7: repeats 0
            ["c.jpg", "-0.0", "2", "20", "22", "PNN"],  # 8
            ["c.jpg", "0", "2", "20", "22", "PNN"]]  # 9: repeats 8 (-0.0 is 0.0)
    path = tmp_path / "train.csv"
    path.write_text("NAME,x1,y1,x2,y2,class\n" + "".join(",".join(row) + "\n" for row in rows))
    table = read_csv_table(path, TRAIN_COLUMNS)
    checked = check_train_rows(table)
    repeats = {row: detail for row, findings in enumerate(checked.findings)
               for _, _, reason, detail in findings if reason == "duplicate_row"}
    assert repeats == {5: "same NAME, box and class as row 0", 6: "same NAME, box and class as row 2",
                       7: "same NAME, box and class as row 0", 9: "same NAME, box and class as row 8"}
    assert table.rows == len(rows) and [line for line, _ in table] == list(range(2, 2 + len(rows)))


def test_real_challenge_tables_pass_every_row_check():
    train = check_train_rows(read_csv_table(shared_path("data", "cytologia", "train.csv"), TRAIN_COLUMNS))
    test = check_test_rows(read_csv_table(shared_path("data", "cytologia", "test.csv"), TEST_COLUMNS))
    assert (len(train.names), len(test.names)) == (52_748, 22_689)  # docs/method.md §1.1
    assert not any(train.findings) and not any(test.findings)
    splits = referenced_images(train, test)
    assert len(splits) == 69_168 and sum(split == "train" for split in splits.values()) == 48_417


def test_reduced_decode_records_the_files_size_and_repairs_at_full_size(dataset):
    size = (200, 160)
    for seed, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        noise_image(seed, size=size).save(dataset.images / name, format="JPEG", quality=90)
    data = jpeg_bytes(noise_image(7, size=size))
    (dataset.images / "a.jpg").write_bytes(data[: len(data) * 2 // 3])
    summary = run(dataset, decode_reduction=2, phash_reducing_gap=2.0)
    images = outputs(dataset)["images"]
    assert (images["width"] == 200).all() and (images["height"] == 160).all()
    assert (images.loc["a.jpg", "status"], images.loc["a.jpg", "reason"]) == ("repaired", "truncated_jpeg")
    assert Image.open(images.loc["a.jpg", "path"]).size == size  # the working copy is never the reduced decode
    exact = Image.open(dataset.images / "b.jpg").convert("RGB")
    assert abs(images.loc["b.jpg", "pixel_mean"] - rgb_mean_std(exact)[0]) < 0.5
    assert summary["images_repaired"] == 1 and summary["images_in"] == 4


def test_images_table_written_in_row_groups_equals_one_frame(dataset, monkeypatch):
    from leukoflow.ingest import contract

    run(dataset)
    whole = outputs(dataset)["images"]
    monkeypatch.setattr(contract, "IMAGE_ROWS_PER_GROUP", 1)
    run(dataset)
    pd.testing.assert_frame_equal(outputs(dataset)["images"], whole)
    assert pq.ParquetFile(dataset.out / "images.parquet").num_row_groups == len(whole) > 1


def test_a_refused_ingest_leaves_no_images_table_behind(tmp_path):
    bad_rows = [[name, "1", "1", "5", "5", "NOT_A_CLASS"] for name in ("a.jpg", "b.jpg")]
    dataset = make_dataset(tmp_path, train_rows=bad_rows)
    with pytest.raises(IngestError, match="no usable row left"):
        run(dataset)
    assert not list(dataset.out.glob("images.parquet*"))
