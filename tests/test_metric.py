"""Tests of leukoflow.metric: the published cases, a per-image reference loop, the validator."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score

from leukoflow.constants import SUBMISSION_COLUMNS
from leukoflow.metric import (
    MetricInputError,
    SubmissionError,
    TableReadError,
    count_problems,
    fixed_box_scorer,
    macro_f1_of_labels,
    score,
    score_files,
    validate_submission,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CASES_JSON = SHARED / "docs" / "metric_cases.json"
BOX = ["x1", "y1", "x2", "y2"]


def frame_from_records(records: list[dict]) -> pd.DataFrame:
    """metric_cases.json loading convention: null coordinate = NaN, null class = Python None.

    NOTE: pandas 3 would infer the `str` dtype for `class` and turn None into NaN ('nan'),
    so the class column is built as object explicitly.
    """
    columns = {name: [record[name] for record in records] for name in SUBMISSION_COLUMNS}
    frame = pd.DataFrame({name: columns[name] for name in ("trustii_id", "NAME")})
    for name in BOX:
        values = [np.nan if value is None else value for value in columns[name]]
        frame[name] = np.asarray(values, dtype=np.float64 if np.nan in values else None)
    frame["class"] = pd.Series(columns["class"], dtype=object)
    return frame


# ----------------------------------------------------------------------------- reference loop

def reference_giou_matrix(truth_xyxy: np.ndarray, pred_xyxy: np.ndarray) -> np.ndarray:
    """docs/metric.md step 4, written out for an (N, 4) x (M, 4) pair of float64 arrays."""
    a, b = truth_xyxy[:, None, :], pred_xyxy[None, :, :]
    inter_w = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    inter_h = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    intersection = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - intersection
    iou = intersection / np.maximum(union, 1e-7)
    enc = ((np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0]))
           * (np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])))
    return iou - (enc - union) / np.maximum(enc, 1e-7)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _dedup_key(values) -> tuple:
    # pandas drop_duplicates treats None and NaN as one and the same value
    return tuple("<missing>" if _missing(value) else value for value in values)


def _label(value) -> str:
    return "None" if value is None else str(value)


def reference_score(truth: pd.DataFrame, submission: pd.DataFrame) -> dict:
    """The published per-image loop, straight from docs/metric.md, in plain Python and numpy."""
    t_ids, t_names, t_classes = (truth[c].to_numpy(dtype=object)
                                 for c in ("trustii_id", "NAME", "class"))
    t_boxes = truth[BOX].to_numpy(dtype=np.float64)
    s_ids, s_names, s_classes = (submission[c].to_numpy(dtype=object)
                                 for c in ("trustii_id", "NAME", "class"))
    s_boxes = submission[BOX].to_numpy(dtype=np.float64)
    rows_of_image: dict = {}
    for row, name in enumerate(t_names):
        if not _missing(name):
            rows_of_image.setdefault(name, []).append(row)
    sub_rows_of_name: dict = {}
    for row, name in enumerate(s_names):
        sub_rows_of_name.setdefault(name, []).append(row)
    out = {"trustii_id": [], "NAME": [], "class_true": [], "class_pred": [], "giou": []}
    for image, rows in rows_of_image.items():  # dicts keep first-appearance order
        image_ids = {t_ids[row] for row in rows}
        seen_ids, seen_boxes, kept = set(), set(), []
        for row in sub_rows_of_name.get(image, []):
            if s_ids[row] not in image_ids:
                continue
            id_key = _dedup_key([s_ids[row]])
            box_key = _dedup_key([*s_boxes[row].tolist(), s_classes[row]])
            if id_key in seen_ids:
                continue
            seen_ids.add(id_key)
            if box_key in seen_boxes:
                continue
            seen_boxes.add(box_key)
            kept.append(row)
        if kept:
            matrix = reference_giou_matrix(t_boxes[rows], s_boxes[kept])
            best = np.argmax(matrix, axis=1)
            gious = matrix[np.arange(len(rows)), best].tolist()
            labels = [_label(s_classes[kept[column]]) for column in best]
        else:
            gious, labels = [-1.0] * len(rows), ["None"] * len(rows)
        out["trustii_id"] += [t_ids[row] for row in rows]
        out["NAME"] += [image] * len(rows)
        out["class_true"] += [t_classes[row] for row in rows]
        out["class_pred"] += labels
        out["giou"] += gious
    per_row = pd.DataFrame(out).astype({"class_true": object, "class_pred": object})
    rescaled = ((per_row["giou"] + 1) / 2).fillna(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        macro_f1 = f1_score(per_row["class_true"].to_list(), per_row["class_pred"].to_list(),
                            average="macro")
    mean_rescaled = rescaled.mean()
    return {"score": float(0.2 * mean_rescaled + 0.8 * macro_f1),
            "mean_rescaled_giou": float(mean_rescaled), "macro_f1": float(macro_f1),
            "per_row": per_row}


# ----------------------------------------------------------------------------- published cases

def _load_cases() -> list[dict]:
    if not CASES_JSON.exists():
        return []
    return json.loads(CASES_JSON.read_text())


CASES = _load_cases()


@pytest.mark.skipif(not CASES, reason=f"{CASES_JSON} is absent (shared reference docs)")
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_published_case(case):
    result = score(frame_from_records(case["gt"]), frame_from_records(case["pred"]))
    assert result.score == pytest.approx(case["expected_score"], abs=1e-12)
    assert result.mean_rescaled_giou == pytest.approx(case["expected_mean_rescaled_giou"], abs=1e-12)
    assert result.macro_f1 == pytest.approx(case["expected_macro_f1"], abs=1e-12)
    labels = sorted(set(result.per_row["class_true"]) | set(result.per_row["class_pred"]))
    assert labels == case["expected_labels_in_macro_f1"]
    expected = pd.DataFrame(case["expected_per_gt_row"])
    got = result.per_row
    assert got["trustii_id"].tolist() == expected["trustii_id"].tolist()
    assert got["NAME"].tolist() == expected["NAME"].tolist()
    assert got["class_true"].tolist() == expected["class_x"].tolist()
    assert got["class_pred"].tolist() == expected["class_y"].tolist()
    # the JSON gives GIoU rounded to 10 decimals
    np.testing.assert_allclose(got["giou"], expected["giou"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["rescaled_giou"], expected["rescaled_giou"], atol=1e-9, rtol=0)


@pytest.mark.skipif(not CASES, reason=f"{CASES_JSON} is absent (shared reference docs)")
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_reference_loop_reproduces_published_case(case):
    # guards the reference itself, which the property test below trusts
    result = reference_score(frame_from_records(case["gt"]), frame_from_records(case["pred"]))
    assert result["score"] == pytest.approx(case["expected_score"], abs=1e-12)


# ----------------------------------------------------------------------------- quirks on literal frames

def _truth() -> pd.DataFrame:
    return frame_from_records([
        {"trustii_id": 1, "NAME": "a.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "class": "LY"},
        {"trustii_id": 2, "NAME": "b.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "class": "MO"},
        {"trustii_id": 3, "NAME": "a.jpg", "x1": 20, "y1": 20, "x2": 30, "y2": 30, "class": "PNN"},
    ])


def test_none_class_gives_label_None_and_nan_class_gives_nan():
    sub = _truth()
    sub["class"] = pd.Series([None, np.nan, "PNN"], dtype=object)
    result = score(_truth(), sub)
    # rows are reported image by image: a.jpg (ids 1, 3) then b.jpg (id 2)
    assert result.per_row["trustii_id"].tolist() == [1, 3, 2]
    assert result.per_row["class_pred"].tolist() == ["None", "PNN", "nan"]


def test_nan_giou_wins_the_argmax_and_rescales_to_zero():
    sub = _truth()
    sub.loc[0, "x1"] = np.nan  # image a.jpg: first candidate is NaN, second is a perfect box
    result = score(_truth(), sub)
    assert np.isnan(result.per_row["giou"].iloc[0]) and np.isnan(result.per_row["giou"].iloc[1])
    assert result.per_row["rescaled_giou"].iloc[0] == 0.0
    assert result.per_row["class_pred"].tolist()[:2] == ["LY", "LY"]


def test_score_does_not_modify_its_inputs():
    truth, sub = _truth(), _truth().iloc[::-1]
    truth_copy, sub_copy = truth.copy(), sub.copy()
    score(truth, sub)
    pd.testing.assert_frame_equal(truth, truth_copy)
    pd.testing.assert_frame_equal(sub, sub_copy)


def test_perfect_submission_scores_one():
    assert score(_truth(), _truth().sample(frac=1, random_state=0)).score == 1.0


def test_missing_column_is_named():
    with pytest.raises(MetricInputError, match="class"):
        score(_truth(), _truth().drop(columns="class"))


def test_score_files_names_unreadable_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(TableReadError, match="nope.csv"):
        score_files(missing, missing)


def test_score_files_reads_missing_class_as_nan_label(tmp_path):
    _truth().to_csv(tmp_path / "truth.csv", index=False)
    sub = _truth()
    sub["class"] = pd.Series([None, "MO", "PNN"], dtype=object)
    sub.to_csv(tmp_path / "sub.csv", index=False)  # empty cell: read back as NaN, like pandas 2.2
    result = score_files(tmp_path / "truth.csv", tmp_path / "sub.csv")
    assert result.per_row["class_pred"].tolist() == ["nan", "PNN", "MO"]


# ----------------------------------------------------------------------------- property test

CLASS_POOL = ["PNN", "LY", "MO", "EO", None, np.nan, "xx"]
coordinate = st.one_of(st.integers(0, 12).map(float), st.integers(0, 24).map(lambda v: v / 2),
                       st.just(np.nan))


@st.composite
def scoring_inputs(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells_per_image = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    truth_records = []
    for image, n_cells in enumerate(cells_per_image):
        for _ in range(n_cells):
            x1, y1 = draw(st.integers(0, 8)), draw(st.integers(0, 8))
            truth_records.append({"trustii_id": 100 + len(truth_records), "NAME": f"{image}.jpg",
                                  "x1": x1, "y1": y1, "x2": x1 + draw(st.integers(1, 5)),
                                  "y2": y1 + draw(st.integers(1, 5)),
                                  "class": draw(st.sampled_from(["PNN", "LY", "MO"]))})
    names = [f"{image}.jpg" for image in range(len(cells_per_image))] + ["zz.jpg"]
    ids = [record["trustii_id"] for record in truth_records] + [999]
    sub_records = []
    for record in truth_records:
        copies = draw(st.integers(0, 2))  # 0: missing cell, 2: duplicate id
        for _ in range(copies):
            sub_records.append({**record, **{c: draw(coordinate) for c in BOX},
                                "class": draw(st.sampled_from(CLASS_POOL))})
    for _ in range(draw(st.integers(0, 3))):  # foreign ids, wrong names, exact box duplicates
        source = draw(st.sampled_from(sub_records)) if sub_records and draw(st.booleans()) else None
        boxes = ({c: source[c] for c in BOX} if source else {c: draw(coordinate) for c in BOX})
        label = source["class"] if source else draw(st.sampled_from(CLASS_POOL))
        sub_records.append({"trustii_id": draw(st.sampled_from(ids)),
                            "NAME": draw(st.sampled_from(names)), **boxes, "class": label})
    order = draw(st.permutations(range(len(truth_records))))
    sub_order = draw(st.permutations(range(len(sub_records))))
    truth = frame_from_records([truth_records[i] for i in order])
    empty = {c: [] for c in SUBMISSION_COLUMNS}
    sub = (frame_from_records([sub_records[i] for i in sub_order]) if sub_records
           else pd.DataFrame(empty).astype({c: float for c in BOX} | {"class": object}))
    return truth, sub


@settings(max_examples=120, deadline=None)
@given(scoring_inputs())
def test_vectorised_score_equals_reference_loop(inputs):
    truth, sub = inputs
    expected = reference_score(truth, sub)
    got = score(truth, sub)
    assert got.score == pytest.approx(expected["score"], abs=1e-12, nan_ok=True)
    assert got.mean_rescaled_giou == pytest.approx(expected["mean_rescaled_giou"], abs=1e-12)
    assert got.macro_f1 == pytest.approx(expected["macro_f1"], abs=1e-12)
    want = expected["per_row"]
    assert got.per_row["trustii_id"].tolist() == want["trustii_id"].tolist()
    assert got.per_row["class_pred"].tolist() == want["class_pred"].tolist()
    np.testing.assert_array_equal(got.per_row["giou"].to_numpy(), want["giou"].to_numpy())


@settings(max_examples=120, deadline=None)
@given(scoring_inputs(), st.randoms(use_true_random=False))
def test_fixed_box_scorer_equals_score_for_any_classes(inputs, random):
    truth, sub = inputs
    scorer = fixed_box_scorer(truth, sub)
    same_box_twice = sub.duplicated(subset=["NAME", *BOX]).any()
    if scorer is None:
        assert same_box_twice  # only shared boxes make the classes decide which rows survive
        return
    for _ in range(3):
        classes = [random.choice(CLASS_POOL) for _ in range(len(sub))]
        expected = score(truth, sub.assign(**{"class": classes})).score
        got = scorer.score(np.array(classes, dtype=object))
        assert got == expected or (math.isnan(got) and math.isnan(expected))  # bit for bit


def test_fixed_box_scorer_declines_a_shared_box():
    truth = _truth()
    shared = truth.copy()
    shared.loc[2, BOX] = shared.loc[0, BOX].to_numpy()  # both a.jpg rows now hold one box
    assert fixed_box_scorer(truth, truth) is not None
    assert fixed_box_scorer(truth, shared) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["PNN", "LY", "MO", "None", "nan"]),
                          st.sampled_from(["PNN", "LY", "EO", "None"])), min_size=1, max_size=30))
def test_macro_f1_of_labels_is_scikit_learns_bit_for_bit(pairs):
    true, pred = (np.array(side, dtype=object) for side in zip(*pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert macro_f1_of_labels(true, pred) == float(f1_score(true, pred, average="macro"))


# ----------------------------------------------------------------------------- validator

def _test_table() -> pd.DataFrame:
    return pd.DataFrame({"trustii_id": [1, 2, 3], "NAME": ["a.jpg", "b.jpg", "a.jpg"]})


def _good_submission() -> pd.DataFrame:
    return frame_from_records([
        {"trustii_id": 3, "NAME": "a.jpg", "x1": 20, "y1": 20, "x2": 30, "y2": 30, "class": "PNN"},
        {"trustii_id": 1, "NAME": "a.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "class": "LY"},
        {"trustii_id": 2, "NAME": "b.jpg", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "class": "MO"},
    ])


def _with(**changes) -> pd.DataFrame:
    sub = _good_submission()
    for column, value in changes.items():
        sub[column] = sub[column].astype(object)
        sub.loc[0, column] = value
    return sub


def test_valid_submission_has_no_problem_and_is_not_modified():
    sub = _good_submission()
    problems = validate_submission(_test_table(), sub, strict=True)
    assert problems.empty
    assert list(problems.columns) == ["problem", "trustii_id", "NAME", "field", "detail"]
    pd.testing.assert_frame_equal(sub, _good_submission())


def test_empty_submission_reports_every_id_missing():
    empty = _good_submission().iloc[0:0]
    assert count_problems(validate_submission(_test_table(), empty)) == {"missing_id": 3}


@pytest.mark.parametrize(
    ("submission", "problem", "field"),
    [
        (_good_submission().drop(columns="y2"), "missing_column", "y2"),  # no y2 column
        (_good_submission().iloc[1:], "missing_id", "trustii_id"),  # id 3 absent
        (_with(trustii_id=7), "extra_id", "trustii_id"),  # id 7 unknown (and 3 missing)
        (pd.concat([_good_submission(), _good_submission().iloc[[1]]]), "duplicate_id", "trustii_id"),
        (_with(NAME="b.jpg"), "name_mismatch", "NAME"),  # id 3 belongs to a.jpg
        (_with(x2=np.inf), "non_finite_box", "x2"),  # infinite coordinate
        (_with(y1="abc"), "non_finite_box", "y1"),  # text coordinate
        (_with(x1=np.nan), "non_finite_box", "x1"),  # missing coordinate
        (_with(x1=40), "inverted_box", "x1,x2"),  # x2 < x1
        (_with(y2=20), "zero_area_box", "y1,y2"),  # zero height
        (_with(**{"class": "Pnn"}), "unknown_class", "class"),  # codes are case-sensitive
        (_with(**{"class": None}), "unknown_class", "class"),  # missing class
    ],
)
def test_each_problem_kind_is_reported(submission, problem, field):
    problems = validate_submission(_test_table(), submission)
    assert ((problems["problem"] == problem) & (problems["field"] == field)).sum() == 1, problems


def test_repeated_test_id_is_reported_without_crashing():
    test_table = pd.concat([_test_table(), pd.DataFrame({"trustii_id": [2], "NAME": ["c.jpg"]})])
    problems = validate_submission(test_table, _good_submission())
    assert count_problems(problems) == {"duplicate_test_id": 2}


def test_strict_raises_with_the_first_problems_listed():
    with pytest.raises(SubmissionError, match=r"(?s)2 problem.*missing_id.*extra_id") as raised:
        validate_submission(_test_table(), _with(trustii_id=7), strict=True)
    assert len(raised.value.problems) == 2


def test_validation_never_changes_a_valid_submission_score():
    sub = _good_submission()
    truth = sub.copy()
    before = score(truth, sub).score
    validate_submission(_test_table(), sub)
    assert score(truth, sub).score == before
