"""Submission assembly (leukoflow.ensemble.submission): order, validation, fallback, scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukoflow import metric

from leukoflow.ensemble import submission

from leukoflow import tables
from leukoflow.constants import CLASSES


def _test_table() -> pd.DataFrame:
    # test.csv rows scattered as in the challenge: img_b has two cells, img_c is unreadable
    names = ["img_b.jpg", "img_a.jpg", "img_c.jpg", "img_b.jpg"]
    return pd.DataFrame({"row": np.arange(4, dtype="int64"), "trustii_id": np.array([17, 3, 9, 11], dtype="int64"),
                         "name": pd.Series(names, dtype="str"), "status": "ok", "reason": ""})


def _test_boxes() -> pd.DataFrame:
    frame = pd.DataFrame({
        "row": np.array([3, 0, 1, 2], dtype="int64"), "trustii_id": np.array([11, 17, 3, 9], dtype="int64"),
        "name": pd.Series(["img_b.jpg", "img_b.jpg", "img_a.jpg", "img_c.jpg"], dtype="str"),
        "x1": [50.0, 2.0, 10.0, 0.0], "y1": [40.0, 3.0, 12.0, 0.0], "x2": [90.0, 30.0, 60.0, 1.0],
        "y2": [80.0, 33.0, 58.0, 1.0], "score": [0.8, 0.9, 0.95, 0.0],
        "source": pd.Series(["detected", "detected", "detected", "unreadable"], dtype="str"),
    })
    return tables.validate(frame, tables.TEST_BOXES)


def _classes() -> pd.DataFrame:
    ids = {17: ("img_b.jpg#0", "LY"), 11: ("img_b.jpg#1", "MO"), 3: ("img_a.jpg#0", "PNN")}
    frame = pd.DataFrame({
        "id": pd.Series([v[0] for v in ids.values()], dtype="str"),
        "name": pd.Series([v[0].split("#")[0] for v in ids.values()], dtype="str"),
        "fold": np.full(3, -1, dtype="int64"), "trustii_id": np.array(list(ids), dtype="int64"),
        "truth": np.full(3, -1, dtype="int64"),
        "class_idx": np.array([CLASSES.index(v[1]) for v in ids.values()], dtype="int64"),
        "label": pd.Series([v[1] for v in ids.values()], dtype="str"), "probability": [0.9, 0.8, 0.7],
        "single_cell": [False, False, True], "blended": [False, False, True],
    })
    return tables.validate(frame, tables.ENSEMBLE_CLASSES)


def test_one_row_per_test_id_in_test_order_with_integer_boxes():
    frame, counts = submission.assemble(_test_table(), _test_boxes(), _classes(), fallback_class="EO")
    assert frame["trustii_id"].tolist() == [17, 3, 9, 11]
    assert frame["class"].tolist() == ["LY", "PNN", "EO", "MO"]
    assert frame.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == [2, 3, 30, 33]
    assert counts["rows_fallback_class"] == 1 and counts["box_sources"]["unreadable"] == 1
    tables.validate(frame, tables.SUBMISSION)
    problems = metric.validate_submission(_test_table().rename(columns={"name": "NAME"}), frame, strict=True)
    assert problems.empty


def test_a_test_row_without_box_is_an_error():
    with pytest.raises(ValueError, match="row 2 .*trustii_id 9"):
        submission.assemble(_test_table(), _test_boxes().iloc[:3], _classes(), fallback_class="EO")


def test_build_submission_validates_writes_and_scores(tmp_path):
    tables.write_table(_test_table(), tmp_path / "test.parquet", tables.INGEST_TEST)
    tables.write_table(_test_boxes(), tmp_path / "boxes.parquet", tables.TEST_BOXES)
    tables.write_table(_classes(), tmp_path / "classes.parquet", tables.ENSEMBLE_CLASSES)
    (tmp_path / "weights.json").write_text(json.dumps({"fallback_class": "EO"}))
    truth = pd.DataFrame({"trustii_id": [17, 3, 9, 11], "NAME": ["img_b.jpg", "img_a.jpg", "img_c.jpg", "img_b.jpg"],
                          "x1": [2, 10, 0, 50], "y1": [3, 12, 0, 40], "x2": [30, 60, 1, 90], "y2": [33, 58, 1, 80],
                          "class": ["LY", "PNN", "EO", "MO"]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "submission" / "submission.csv"
    summary = submission.build_submission(test=str(tmp_path / "test.parquet"), test_boxes=str(tmp_path / "boxes.parquet"),
                                          classes=str(tmp_path / "classes.parquet"), weights=str(tmp_path / "weights.json"),
                                          submission=str(out), truth=[str(tmp_path / "truth.csv")])
    written = pd.read_csv(out)
    assert list(written.columns) == ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]
    assert written["trustii_id"].tolist() == [17, 3, 9, 11]
    assert summary["score"] == pytest.approx(1.0) and summary["validated"]


def test_an_invalid_submission_is_not_written(tmp_path, monkeypatch):
    tables.write_table(_test_table(), tmp_path / "test.parquet", tables.INGEST_TEST)
    tables.write_table(_test_boxes(), tmp_path / "boxes.parquet", tables.TEST_BOXES)
    tables.write_table(_classes(), tmp_path / "classes.parquet", tables.ENSEMBLE_CLASSES)
    (tmp_path / "weights.json").write_text(json.dumps({"fallback_class": "EO"}))
    real = submission.assemble
    monkeypatch.setattr(submission, "assemble",
                        lambda *a, **k: (lambda f, c: (f.iloc[:3], c))(*real(*a, **k)))
    out = tmp_path / "submission.csv"
    with pytest.raises(metric.SubmissionError, match="missing_id"):
        submission.build_submission(test=str(tmp_path / "test.parquet"), test_boxes=str(tmp_path / "boxes.parquet"),
                                    classes=str(tmp_path / "classes.parquet"), weights=str(tmp_path / "weights.json"),
                                    submission=str(out), truth=[])
    assert not out.exists()
