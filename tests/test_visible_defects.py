"""The detector-visible synthetic defects: undersized and shifted boxes, unannotated fully visible cells."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from leukoflow import tables
from leukoflow.synthetic import challenge_layout, synthesize
from leukoflow.synthetic.visible_defects import VISIBLE_KINDS

DEFECTS = {"undersized_box": 3, "shifted_box": 3, "unannotated_cell": 3, "red_cell_box": 1}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    out = tmp_path_factory.mktemp("visible")
    synthesize(**challenge_layout(out), n_images=40, test_fraction=0.3, seed=3, jpeg_quality=90, defects=DEFECTS,
               near_duplicate_max_distance=4, threads=1)
    return out, {"train": pd.read_csv(out / "train.csv"),
                 "defects": tables.read_table(out / "defects.parquet", tables.DEFECTS)}


def _numbers(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"-?\d+", text)]


def _iou(a, b) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_each_kind_is_recorded_with_its_count(generated):
    counts = generated[1]["defects"]["kind"].value_counts().to_dict()
    assert {kind: counts.get(kind, 0) for kind in VISIBLE_KINDS} == {k: DEFECTS[k] for k in VISIBLE_KINDS}


@pytest.mark.parametrize(("kind", "low", "high"), [("undersized_box", 0.1, 0.4), ("shifted_box", 0.15, 0.45)])
def test_moved_boxes_overlap_their_cell_badly(generated, kind, low, high):
    _, frames = generated
    for row in frames["defects"][frames["defects"]["kind"] == kind].itertuples():
        before, after = row.detail.split("->")
        box = frames["train"].iloc[row.row]
        now = [box["x1"], box["y1"], box["x2"], box["y2"]]
        assert now == _numbers(after)[:4]
        assert low <= _iou(_numbers(before)[:4], now) <= high


def test_unannotated_cells_are_inside_an_image_that_keeps_an_annotated_cell(generated):
    out, frames = generated
    for row in frames["defects"][frames["defects"]["kind"] == "unannotated_cell"].itertuples():
        x1, y1, x2, y2 = _numbers(row.detail)[:4]
        annotated = frames["train"][frames["train"]["NAME"] == row.name]
        assert len(annotated) >= 1 and row.row == -1
        assert not ((annotated["x1"] == x1) & (annotated["y1"] == y1) & (annotated["x2"] == x2)).any()
        assert min(x1, y1) >= 0 and (out / "images" / row.name).exists()
