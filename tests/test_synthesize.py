"""Tests of the synthetic mini-Cytologia generator (leukoflow.synthetic): layout, statistics,
determinism and every injected defect, checked in the files themselves."""

from __future__ import annotations

import re
from pathlib import Path

import imagehash
import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from leukoflow import tables
from leukoflow.constants import CLASSES, SUBMISSION_COLUMNS, TEST_COLUMNS, TRAIN_COLUMNS
from leukoflow.synthetic.morphology import MORPHOLOGY, TRAIN_CELLS_PER_IMAGE
from leukoflow.synthetic import challenge_layout, synthesize
from leukoflow.synthetic.dataset import spread_rows
from leukoflow.synthetic.defects import phash_distance
from leukoflow.synthetic.near_duplicates import HARD_NEGATIVE_KIND, RETAKE_KINDS
from leukoflow.synthetic.plan import DEFECT_KINDS, draw_cell_counts, draw_image_classes
from leukoflow.synthetic.visible_defects import VISIBLE_KINDS  # tested in tests/test_visible_defects.py

TESTED_IN_NEAR_DUPLICATES = (*RETAKE_KINDS, HARD_NEGATIVE_KIND)  # tests/test_near_duplicates.py

NAME_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]\.jpg$")
# The demo config's defect counts (config/config.yaml synthetic.defects).
DEFECTS = {"exact_duplicate": 4, "near_duplicate": 6, "conflicting_duplicate": 1, "train_test_duplicate": 2,
           "out_of_image_box": 6, "red_cell_box": 2, "oversized_box": 2, "wrong_label": 4,
           "unannotated_border_cell": 3, "truncated_jpeg": 1, "unreadable_file": 1, "greyscale_image": 1}
N_IMAGES = 120
DEDUP_MAX_DISTANCE = 6  # the lead's default dedup.max_distance


def generate(out: Path, *, threads: int = 1, near_duplicate_max_distance: int = 4, **settings) -> dict:
    """The `synthesize` entry writing the challenge layout under `out`."""
    return synthesize(**challenge_layout(out), threads=threads,
                      near_duplicate_max_distance=near_duplicate_max_distance, **settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate(out, n_images=N_IMAGES, test_fraction=0.3, seed=7, jpeg_quality=90, defects=DEFECTS,
                       threads=1)
    return out, summary


@pytest.fixture(scope="module")
def frames(dataset) -> dict[str, pd.DataFrame]:
    out, _ = dataset
    return {"train": pd.read_csv(out / "train.csv"), "test": pd.read_csv(out / "test.csv"),
            "truth": pd.read_csv(out / "test_truth.csv"),
            "defects": tables.read_table(out / "defects.parquet", tables.DEFECTS)}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _defects(frames, kind: str) -> pd.DataFrame:
    return frames["defects"][frames["defects"]["kind"] == kind]


# ------------------------------------------------------------------------------------ layout
def test_layout_columns_and_types(dataset, frames):
    out, summary = dataset
    assert list(frames["train"].columns) == list(TRAIN_COLUMNS)
    assert list(frames["test"].columns) == list(TEST_COLUMNS)
    assert list(frames["truth"].columns) == list(SUBMISSION_COLUMNS)
    for column in ("x1", "y1", "x2", "y2"):
        assert pd.api.types.is_integer_dtype(frames["train"][column])
        assert pd.api.types.is_integer_dtype(frames["truth"][column])
    assert pd.api.types.is_integer_dtype(frames["test"]["trustii_id"])
    assert set(frames["train"]["class"]) <= set(CLASSES) and set(frames["truth"]["class"]) <= set(CLASSES)
    files = sorted(path.name for path in (out / "images").iterdir())
    assert len(files) == summary["n_images"] == N_IMAGES
    assert all(NAME_PATTERN.match(name) for name in files)
    train_names, test_names = set(frames["train"]["NAME"]), set(frames["test"]["NAME"])
    assert not train_names & test_names
    assert train_names | test_names == set(files)
    assert len(train_names) == summary["n_train_images"] and len(test_names) == summary["n_test_images"]
    assert len(frames["train"]) == summary["n_train_boxes"] and len(frames["test"]) == summary["n_test_rows"]


def test_test_truth_matches_test_csv(frames):
    test, truth = frames["test"], frames["truth"]
    assert test["trustii_id"].is_unique
    pd.testing.assert_frame_equal(truth[["trustii_id", "NAME"]], test)


@pytest.mark.parametrize("table", ["train", "test"])
def test_rows_of_one_image_are_never_adjacent(frames, table):
    names = frames[table]["NAME"].to_numpy()
    assert (frames[table]["NAME"].value_counts() > 1).any(), "fixture should hold a multi-cell image"
    assert not (names[1:] == names[:-1]).any()


def test_regular_boxes_lie_inside_their_images(dataset, frames):
    out, _ = dataset
    out_of_image = set(_defects(frames, "out_of_image_box")["row"])
    undecodable = set(frames["defects"].query("kind in ['truncated_jpeg', 'unreadable_file']")["name"])
    train = frames["train"].drop(index=list(out_of_image))
    for row in train[~train["NAME"].isin(undecodable)].itertuples():
        width, height = _size(out / "images" / row.NAME)
        assert 0 <= row.x1 < row.x2 <= width - 1 and 0 <= row.y1 < row.y2 <= height - 1, row


# -------------------------------------------------------------------------------- statistics
def test_planned_class_frequencies_follow_the_table():
    rng = np.random.default_rng(0)
    codes = [code for image in draw_image_classes(rng, draw_cell_counts(rng, 20_000, TRAIN_CELLS_PER_IMAGE))
             for code in image]
    observed = pd.Series(codes).value_counts(normalize=True).reindex(CLASSES, fill_value=0.0)
    expected = pd.Series({code: MORPHOLOGY[code].train_boxes for code in CLASSES}, dtype=float)
    expected /= expected.sum()
    assert 0.5 * (observed - expected).abs().sum() < 0.03  # total variation distance


def test_generated_class_frequencies_roughly_follow_the_table(frames):
    labels = pd.concat([frames["train"]["class"], frames["truth"]["class"]])
    observed = labels.value_counts(normalize=True).reindex(CLASSES, fill_value=0.0)
    expected = pd.Series({code: MORPHOLOGY[code].train_boxes for code in CLASSES}, dtype=float)
    assert 0.5 * (observed - expected / expected.sum()).abs().sum() < 0.3  # ~150 boxes: loose


def test_cells_per_image_follow_the_challenge():
    counts = draw_cell_counts(np.random.default_rng(1), 20_000, TRAIN_CELLS_PER_IMAGE)
    assert abs((counts == 1).mean() - 45283 / 48417) < 0.01  # docs/method.md §1.3: ~93.5 % single-cell
    assert counts.max() >= 6


def test_multi_class_images_exist_but_are_rare():
    rng = np.random.default_rng(2)
    images = draw_image_classes(rng, draw_cell_counts(rng, 20_000, TRAIN_CELLS_PER_IMAGE))
    mixed = sum(len(set(codes)) > 1 for codes in images) / len(images)
    assert 0.01 < mixed < 0.04  # docs/method.md §1.3: 1,104 of 48,417 images (2.3 %)


# ---------------------------------------------------------------------------- determinism
@pytest.mark.slow
def test_same_seed_gives_byte_identical_files_for_any_worker_count(tmp_path):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        generate(out, n_images=60, test_fraction=0.2, seed=3, jpeg_quality=85, defects=DEFECTS, threads=workers)
        runs[workers] = {path.relative_to(out): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}
    assert runs[1].keys() == runs[2].keys()
    assert all(runs[1][key] == runs[2][key] for key in runs[1])


def test_another_seed_gives_other_images(tmp_path):
    names = []
    for seed in (3, 4):
        generate(tmp_path / str(seed), n_images=5, test_fraction=0.2, seed=seed, jpeg_quality=85, defects={})
        names.append(sorted(path.name for path in (tmp_path / str(seed) / "images").iterdir()))
    assert names[0] != names[1]


# ------------------------------------------------------------------------------- defects
def test_every_defect_kind_is_recorded_with_the_requested_count(frames):
    counts = frames["defects"]["kind"].value_counts().to_dict()
    assert counts == {kind: count for kind, count in DEFECTS.items() if count}
    assert set(counts) == set(DEFECT_KINDS) - set(TESTED_IN_NEAR_DUPLICATES) - set(VISIBLE_KINDS)


def _boxes(frame: pd.DataFrame, name: str) -> list[tuple]:
    return sorted(frame.loc[frame["NAME"] == name, ["x1", "y1", "x2", "y2", "class"]].itertuples(index=False))


def test_exact_duplicates_are_byte_identical_with_the_same_boxes(dataset, frames):
    out, _ = dataset
    for row in _defects(frames, "exact_duplicate").itertuples():
        assert (out / "images" / row.name).read_bytes() == (out / "images" / row.source).read_bytes()
        assert _boxes(frames["train"], row.name) == _boxes(frames["train"], row.source)


def test_conflicting_duplicates_are_byte_identical_with_other_labels(dataset, frames):
    out, _ = dataset
    for row in _defects(frames, "conflicting_duplicate").itertuples():
        assert (out / "images" / row.name).read_bytes() == (out / "images" / row.source).read_bytes()
        copy, source = _boxes(frames["train"], row.name), _boxes(frames["train"], row.source)
        assert [box[:4] for box in copy] == [box[:4] for box in source]
        assert all(a[4] != b[4] for a, b in zip(copy, source))


def test_train_test_duplicates_are_test_copies_of_train_images(dataset, frames):
    out, _ = dataset
    for row in _defects(frames, "train_test_duplicate").itertuples():
        assert (out / "images" / row.name).read_bytes() == (out / "images" / row.source).read_bytes()
        assert row.name in set(frames["test"]["NAME"]) and row.source in set(frames["train"]["NAME"])
        assert _boxes(frames["truth"], row.name) == _boxes(frames["train"], row.source)


def test_near_duplicates_stay_within_the_dedup_distance(dataset, frames):
    out, _ = dataset
    near = _defects(frames, "near_duplicate")
    assert {detail.split()[0] for detail in near["detail"]} == {"reencode", "resize", "crop"}
    for row in near.itertuples():
        assert (out / "images" / row.name).read_bytes() != (out / "images" / row.source).read_bytes()
        assert phash_distance(out / "images" / row.name, out / "images" / row.source) <= DEDUP_MAX_DISTANCE
        assert len(_boxes(frames["train"], row.name)) == len(_boxes(frames["train"], row.source))


def test_distinct_images_are_far_apart_in_phash(dataset, frames):
    out, _ = dataset
    excluded = set(frames["defects"]["name"]) | set(frames["defects"]["source"])
    hashes = []
    for path in sorted((out / "images").iterdir()):
        if path.name not in excluded:
            with Image.open(path) as image:
                hashes.append(int(str(imagehash.phash(image.convert("RGB"))), 16))
    values = np.array(hashes, dtype=np.uint64)
    distances = np.bitwise_count(values[:, None] ^ values[None, :])[np.triu_indices(len(values), 1)]
    assert distances.min() > DEDUP_MAX_DISTANCE
    assert np.median(distances) > 12


def test_truncated_jpeg_needs_load_truncated_images(dataset, frames, monkeypatch):
    out, _ = dataset
    (name,) = _defects(frames, "truncated_jpeg")["name"]
    with Image.open(out / "images" / name) as image, pytest.raises(OSError, match="truncated"):
        image.load()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(out / "images" / name) as image:
        image.load()
        assert image.mode == "RGB"


def test_unreadable_file_is_not_an_image(dataset, frames):
    out, _ = dataset
    (name,) = _defects(frames, "unreadable_file")["name"]
    # Decoded with OpenCV: ultralytics, once imported in this process, patches PIL's Image.open
    # so that an unidentified image raises ImportError (it asks for pi-heif) instead.
    payload = (out / "images" / name).read_bytes()
    assert not payload.startswith(b"\xff\xd8")
    assert cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) is None
    assert name in set(frames["train"]["NAME"])  # its boxes stay: ingest must quarantine them


def test_greyscale_image_is_mode_l(dataset, frames):
    out, _ = dataset
    (name,) = _defects(frames, "greyscale_image")["name"]
    with Image.open(out / "images" / name) as image:
        assert image.mode == "L" and image.format == "JPEG"


def test_out_of_image_boxes_leave_the_image(dataset, frames):
    out, _ = dataset
    for row in _defects(frames, "out_of_image_box").itertuples():
        box = frames["train"].iloc[row.row]
        assert box["NAME"] == row.name
        width, height = _size(out / "images" / row.name)
        assert min(box["x1"], box["y1"]) < 0 or box["x2"] > width - 1 or box["y2"] > height - 1


def test_oversized_boxes_are_far_too_large(frames):
    for row in _defects(frames, "oversized_box").itertuples():
        before = [int(v) for v in re.findall(r"-?\d+", row.detail.split("->")[0])]
        box = frames["train"].iloc[row.row]
        area = (box["x2"] - box["x1"]) * (box["y2"] - box["y1"])
        assert area >= 2 * (before[2] - before[0]) * (before[3] - before[1])


def test_wrong_labels_are_recorded_on_their_rows(frames):
    for row in _defects(frames, "wrong_label").itertuples():
        old, new = row.detail.split(" -> ")
        assert old != new and frames["train"].iloc[row.row]["class"] == new


def test_red_cell_boxes_are_extra_rows_apart_from_the_white_cells(frames):
    for row in _defects(frames, "red_cell_box").itertuples():
        train = frames["train"]
        red = train.iloc[row.row]
        assert red["NAME"] == row.name
        others = train[(train["NAME"] == row.name) & (train.index != row.row)]
        assert len(others) >= 1
        for other in others.itertuples():
            overlap_w = min(red["x2"], other.x2) - max(red["x1"], other.x1)
            overlap_h = min(red["y2"], other.y2) - max(red["y1"], other.y1)
            overlap = max(overlap_w, 0) * max(overlap_h, 0)
            assert overlap < 0.3 * (red["x2"] - red["x1"]) * (red["y2"] - red["y1"])


def test_unannotated_border_cells_touch_the_border(dataset, frames):
    out, _ = dataset
    for row in _defects(frames, "unannotated_border_cell").itertuples():
        x1, y1, x2, y2 = (int(v) for v in re.findall(r"\d+", row.detail)[:4])
        width, height = _size(out / "images" / row.name)
        assert x1 == 0 or y1 == 0 or x2 == width - 1 or y2 == height - 1
        assert row.row == -1


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"defects": {"blurry": 1}}, ValueError, "unknown defect"),  # typo in a kind
        ({"defects": {"wrong_label": -1}}, ValueError, "non-negative"),
        ({"n_images": 10, "defects": {"wrong_label": 20}}, ValueError, "distinct base train images"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"jpeg_quality": 0}, ValueError, "jpeg_quality"),
        ({"n_images": 2, "defects": {"exact_duplicate": 2}}, ValueError, "no base image"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, error, match):
    arguments = {"n_images": 10, "test_fraction": 0.2, "seed": 1, "jpeg_quality": 90, "defects": {}} | kwargs
    with pytest.raises(error, match=match):
        generate(tmp_path, **arguments)


def test_refuses_to_mix_with_existing_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "old.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path, n_images=3, test_fraction=0.0, seed=1, jpeg_quality=90, defects={})


@pytest.mark.parametrize(
    ("names", "adjacent_left"),
    [
        ([], 0),  # empty table
        (["a"], 0),  # one row
        (["a", "a", "b", "c", "d", "e"], 0),  # one two-cell image among singles
        (["a", "a", "a", "b"], 1),  # impossible: one image holds most rows
    ],
)
def test_spread_rows(names, adjacent_left):
    order, left = spread_rows(np.array(names, dtype=object), np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(names)))
    assert left == adjacent_left
