"""The Cytologia challenge metric, reproduced exactly and vectorised (docs/metric.md).

The challenge scored submissions with one published pandas function (the same code sits in the
winner's `code/src/cdc/yolo/tools.py::compute_metric`, docs/method.md §10.3). For every ground-truth
image it took the submission rows with that NAME *and* one of the image's trustii_ids, dropped
repeated ids and repeated (box, class) rows (first wins), matched every ground-truth box to the
candidate of highest GIoU (numpy argmax: first column on ties, a NaN wins), and scored
0.2 * mean((GIoU + 1) / 2) + 0.8 * macro F1 over the union of true and matched labels.

`score` gives the same numbers (float64, same operation order) for all images at once: the
candidate filter and de-duplication are two pandas `drop_duplicates` over the whole table, and
the GIoU "matrices" are one flat array of (truth row, candidate) pairs reduced per truth row.
It makes no judgement on the submission; `validate_submission` reports what is wrong with one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.constants import CLASSES, SUBMISSION_COLUMNS, TEST_COLUMNS
from leukoflow.csvio import CsvContractError, read_csv_frame

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
# Constants of the published function, not tunables: changing one changes the challenge metric.
GIOU_WEIGHT = 0.2
F1_WEIGHT = 0.8
AREA_FLOOR = 1e-7
NO_PREDICTION_GIOU = -1.0
NO_PREDICTION_LABEL = "None"
PER_ROW_COLUMNS = ("trustii_id", "NAME", "class_true", "class_pred", "giou", "rescaled_giou")
PROBLEM_COLUMNS = ("problem", "trustii_id", "NAME", "field", "detail")


class MetricInputError(ValueError):
    """A truth or submission table the metric cannot read or use (missing column, bad file)."""


class TableReadError(MetricInputError):
    """A CSV file that cannot be opened or parsed; the message names the file."""


class SubmissionError(MetricInputError):
    """Raised by `validate_submission(strict=True)`; `problems` holds the full problem table."""

    def __init__(self, problems: pd.DataFrame, max_listed: int):
        self.problems = problems
        listed = problems.head(max_listed)
        lines = [f"  {row.problem}: trustii_id={row.trustii_id!r} NAME={row.NAME!r} "
                 f"field={row.field}: {row.detail}" for row in listed.itertuples(index=False)]
        more = len(problems) - len(listed)
        tail = [f"  ... and {more} more"] if more > 0 else []
        super().__init__("\n".join([f"submission has {len(problems)} problem(s):", *lines, *tail]))


@dataclass(frozen=True)
class MetricResult:
    """Final score, its two components and one row per scored ground-truth cell.

    `per_row` columns: trustii_id, NAME, class_true, class_pred (the matched class as the
    label string macro F1 saw: 'None' when the image had no candidate, 'nan' for a NaN class),
    giou and rescaled_giou, in the published function's order (images by first appearance,
    rows in table order within an image). They are its class_x / class_y / giou columns.
    """

    score: float
    mean_rescaled_giou: float
    macro_f1: float
    per_row: pd.DataFrame

    def as_dict(self) -> dict[str, float]:
        return {"score": self.score, "mean_rescaled_giou": self.mean_rescaled_giou,
                "macro_f1": self.macro_f1}


# ----------------------------------------------------------------------------- scoring

def score(truth: pd.DataFrame, submission: pd.DataFrame) -> MetricResult:
    """Score a submission against ground truth exactly as the challenge did.

    Args:
        truth: one row per cell, columns trustii_id, NAME, x1, y1, x2, y2, class (boxes xyxy, px).
            Rows with a missing NAME are not scored (the published loop never selects them).
        submission: same columns, any number of rows in any order; nothing is validated.

    Returns:
        MetricResult with score = 0.2 * mean rescaled GIoU + 0.8 * macro F1.

    Raises:
        MetricInputError: a required column is missing or a coordinate is not numeric.
    """
    _require_columns(truth, SUBMISSION_COLUMNS, "truth")
    _require_columns(submission, SUBMISSION_COLUMNS, "submission")
    truth_rows, image_of_truth, images = _scoring_truth(truth)
    candidates, image_of_candidate = _candidate_predictions(truth, images, submission)
    giou, matched = _match_best_candidates(
        _boxes_xyxy(truth_rows, "truth"), image_of_truth,
        _boxes_xyxy(candidates, "submission"), image_of_candidate, n_images=len(images))
    class_pred = _matched_labels(candidates["class"].to_numpy(dtype=object), matched)
    per_row = pd.DataFrame({
        "trustii_id": truth_rows["trustii_id"].to_numpy(),
        "NAME": truth_rows["NAME"].to_numpy(dtype=object),
        "class_true": truth_rows["class"].to_numpy(dtype=object),
        "class_pred": class_pred,
        "giou": giou,
    })
    per_row["rescaled_giou"] = _rescaled_giou(per_row["giou"])
    return _combine(per_row)


def score_files(truth_csv: str | Path, submission_csv: str | Path) -> MetricResult:
    """`score` on two CSV files, read as the published function read them (plain `read_csv`) once
    they meet the data contract (`read_csv_table`).

    Raises:
        TableReadError: a file cannot be read or parsed (the message names it).
        MetricInputError: a required column is missing (the message names the file).
    """
    truth = read_csv_table(truth_csv, role="truth")
    submission = read_csv_table(submission_csv, role="submission")
    _require_columns(truth, SUBMISSION_COLUMNS, f"truth file {str(truth_csv)!r}")
    _require_columns(submission, SUBMISSION_COLUMNS, f"submission file {str(submission_csv)!r}")
    return score(truth, submission)


# What each kind of file must hold beyond being well-formed CSV (leukoflow.csvio): a non-integer
# trustii_id would silently match nothing and score 0.0; an empty truth class has no F1 class.
_CONTRACTS: dict[str, dict[str, tuple[str, ...]]] = {
    "truth": {"expected": SUBMISSION_COLUMNS, "integer_columns": ("trustii_id",),
              "numeric_columns": BOX_COLUMNS, "nonempty_columns": (*BOX_COLUMNS, "class")},
    "submission": {"integer_columns": ("trustii_id",), "numeric_columns": BOX_COLUMNS},
    "test": {"expected": TEST_COLUMNS, "integer_columns": ("trustii_id",), "nonempty_columns": ("NAME",)},
}
_CONTRACTS["expected counts"] = _CONTRACTS["test"]


def read_csv_table(path: str | Path, *, role: str) -> pd.DataFrame:
    """Read a CSV under the data contract of its role; any breach becomes a TableReadError naming
    the file, line and field. Well-formed files give exactly what a plain `read_csv` gives."""
    contract = dict(_CONTRACTS.get(role, {}))
    expected = contract.pop("expected", ())
    try:
        return read_csv_frame(path, expected, role=role, **contract)
    except CsvContractError as error:
        raise TableReadError(str(error)) from error


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], source: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise MetricInputError(f"{source} lacks column(s) {missing}; expected {list(columns)}")


def _boxes_xyxy(frame: pd.DataFrame, source: str) -> np.ndarray:
    """(N, 4) float64 xyxy; float64 reproduces the published int/float arithmetic exactly."""
    try:
        return frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MetricInputError(f"{source} has a non-numeric box coordinate: {error}") from error


def _scoring_truth(truth: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, pd.Index]:
    """`_truth_in_scoring_order` of a truth table that has the columns and at least one scored row."""
    _require_columns(truth, SUBMISSION_COLUMNS, "truth")
    ordered = _truth_in_scoring_order(truth)
    if len(ordered[0]) == 0:
        raise MetricInputError("truth has no row with a NAME: nothing to score")
    return ordered


def _rescaled_giou(giou: pd.Series) -> pd.Series:
    """(GIoU + 1) / 2, a NaN GIoU counting 0 (the published function's fillna)."""
    return ((giou + 1) / 2).fillna(0)


def _truth_in_scoring_order(truth: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, pd.Index]:
    """Truth rows grouped by image (first-appearance order), table order inside an image."""
    image_codes, images = pd.factorize(truth["NAME"])  # a missing NAME gets -1: never scored
    order = np.argsort(image_codes, kind="stable")
    order = order[image_codes[order] >= 0]
    return truth.iloc[order], image_codes[order], pd.Index(images)


def _candidate_predictions(truth: pd.DataFrame, images: pd.Index,
                           submission: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Submission rows each image's loop would use, grouped by image, file order inside one."""
    image_of_row = images.get_indexer(submission["NAME"])
    truth_pairs = pd.MultiIndex.from_arrays(
        [images.get_indexer(truth["NAME"]), truth["trustii_id"].to_numpy()])
    is_candidate = pd.MultiIndex.from_arrays(
        [image_of_row, submission["trustii_id"].to_numpy()]).isin(truth_pairs) & (image_of_row >= 0)
    candidates = submission.loc[is_candidate, list(SUBMISSION_COLUMNS)].assign(
        _image=image_of_row[is_candidate])
    # Per image: first row of each trustii_id, then first row of each exact (box, class).
    candidates = candidates.drop_duplicates(subset=["_image", "trustii_id"])
    candidates = candidates.drop_duplicates(subset=["_image", *BOX_COLUMNS, "class"])
    candidates = candidates.iloc[np.argsort(candidates["_image"].to_numpy(), kind="stable")]
    return candidates, candidates["_image"].to_numpy()


def _match_best_candidates(truth_xyxy: np.ndarray, image_of_truth: np.ndarray,
                           cand_xyxy: np.ndarray, image_of_cand: np.ndarray,
                           n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Per truth row: GIoU of the best candidate of its image and that candidate's position.

    Both inputs are sorted by image. Rows whose image has no candidate get GIoU -1, position -1.
    """
    cand_count = np.bincount(image_of_cand, minlength=n_images)
    cand_start = np.cumsum(cand_count) - cand_count
    pairs_per_row = cand_count[image_of_truth]
    pair_truth = np.repeat(np.arange(len(truth_xyxy)), pairs_per_row)
    row_first_pair = np.cumsum(pairs_per_row) - pairs_per_row
    pair_cand = (np.repeat(cand_start[image_of_truth] - row_first_pair, pairs_per_row)
                 + np.arange(len(pair_truth)))
    pair_giou = generalized_box_iou_pairs(truth_xyxy[pair_truth], cand_xyxy[pair_cand])

    giou = np.full(len(truth_xyxy), NO_PREDICTION_GIOU)
    matched = np.full(len(truth_xyxy), -1)
    has_pairs = pairs_per_row > 0
    best_pair = _first_argmax_per_segment(pair_giou, row_first_pair[has_pairs],
                                          pairs_per_row[has_pairs])
    giou[has_pairs] = pair_giou[best_pair]
    matched[has_pairs] = pair_cand[best_pair]
    return giou, matched


def generalized_box_iou_pairs(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Element-wise GIoU of two (N, 4) xyxy float64 arrays, the challenge's formula.

    NOTE: areas and the enclosing box are not clamped and the denominators are floored at
    1e-7, so inverted boxes give GIoU outside [-1, 1]. torchvision.ops.generalized_box_iou
    clamps the enclosing box and has no floor, hence this numpy transcription.
    """
    ax1, ay1, ax2, ay2 = boxes_a.T
    bx1, by1, bx2, by2 = boxes_b.T
    inter = (np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0)
             * np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / np.maximum(union, AREA_FLOOR)
    enclosing = ((np.maximum(ax2, bx2) - np.minimum(ax1, bx1))
                 * (np.maximum(ay2, by2) - np.minimum(ay1, by1)))
    return iou - (enclosing - union) / np.maximum(enclosing, AREA_FLOOR)


def _first_argmax_per_segment(values: np.ndarray, starts: np.ndarray,
                              lengths: np.ndarray) -> np.ndarray:
    """numpy.argmax of each non-empty segment: first maximum wins, and the first NaN beats all."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.intp)
    segment_max = np.repeat(np.maximum.reduceat(values, starts), lengths)  # NaN propagates
    is_best = (values == segment_max) | (np.isnan(values) & np.isnan(segment_max))
    best = np.flatnonzero(is_best)
    return best[np.searchsorted(best, starts)]


def _matched_labels(candidate_classes: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """Label strings as pandas 2.2 `astype(str)` made them: None -> 'None', NaN -> 'nan'."""
    labels = np.full(len(matched), NO_PREDICTION_LABEL, dtype=object)
    has_match = matched >= 0
    # NOTE: pandas 3 `astype(str)` keeps missing values missing, so str() is applied by hand.
    labels[has_match] = [str(value) for value in candidate_classes[matched[has_match]]]
    return labels


def _combine(per_row: pd.DataFrame) -> MetricResult:
    # Imported here: scikit-learn takes seconds to import and only scoring needs it.
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import f1_score

    mean_rescaled_giou = float(per_row["rescaled_giou"].mean())
    with warnings.catch_warnings():
        # A label that is only true or only predicted has F1 = 0 by design (docs/metric.md step 6).
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        macro_f1 = float(f1_score(per_row["class_true"].to_numpy(dtype=object),
                                  per_row["class_pred"].to_numpy(dtype=object), average="macro"))
    final = float(GIOU_WEIGHT * mean_rescaled_giou + F1_WEIGHT * macro_f1)
    return MetricResult(score=final, mean_rescaled_giou=mean_rescaled_giou, macro_f1=macro_f1,
                        per_row=per_row)


@dataclass(frozen=True)
class FixedBoxScorer:
    """The score of one submission's boxes under any choice of their classes, matched once.

    When no two candidate rows of an image share a box, the classes change neither the candidate
    set (the (box, class) de-duplication drops nothing) nor the matching (GIoU only), so the GIoU
    part is fixed and only the macro F1 moves. `score` then equals `score(truth, submission with
    those classes).score` bit for bit (tests/test_metric.py); the ensemble's class-offset and
    weight searches call it thousands of times on the same boxes.
    """

    class_true: np.ndarray  # per scored truth row, the label strings macro F1 sees
    matched_row: np.ndarray  # per scored truth row, the position of its matched submission row; -1 none
    mean_rescaled_giou: float

    def score(self, classes) -> float:
        """The final score with `classes[k]` the class of the submission's k-th row (positional).

        The classes pass through a pandas column as a submission's would (pandas infers a string
        column, where a None becomes a missing value and so the label 'nan').
        """
        column = pd.Series(classes).to_numpy(dtype=object)
        class_pred = _matched_labels(column, self.matched_row)
        return float(GIOU_WEIGHT * self.mean_rescaled_giou + F1_WEIGHT * macro_f1_of_labels(self.class_true, class_pred))


def macro_f1_of_labels(class_true: np.ndarray, class_pred: np.ndarray) -> float:
    """`f1_score(class_true, class_pred, average="macro")` of two label-string arrays, in numpy.

    Same arithmetic as scikit-learn: per label of the sorted union, 2 tp / (true count + predicted
    count) in float64, then their mean; a label occurs on one side at least, so no division by 0.
    """
    labels, codes = np.unique(np.concatenate([class_true, class_pred]).astype(str), return_inverse=True)
    true_code, pred_code = codes[:len(class_true)], codes[len(class_true):]
    n_labels = len(labels)
    tp = np.bincount(true_code[true_code == pred_code], minlength=n_labels).astype(np.float64)
    support = (np.bincount(true_code, minlength=n_labels).astype(np.float64)
               + np.bincount(pred_code, minlength=n_labels).astype(np.float64))
    return float(np.nanmean(2.0 * tp / support))


def fixed_box_scorer(truth: pd.DataFrame, submission: pd.DataFrame) -> FixedBoxScorer | None:
    """A `FixedBoxScorer` for a submission's boxes (its `class` column is ignored), or None when two
    candidate rows of one image share a box: there the classes decide which rows survive."""
    truth_rows, image_of_truth, images = _scoring_truth(truth)
    positions = submission.assign(**{"class": np.arange(len(submission))})  # every row its own class
    candidates, image_of_candidate = _candidate_predictions(truth, images, positions)
    if candidates.duplicated(subset=["_image", *BOX_COLUMNS]).any():
        return None
    giou, matched = _match_best_candidates(
        _boxes_xyxy(truth_rows, "truth"), image_of_truth,
        _boxes_xyxy(candidates, "submission"), image_of_candidate, n_images=len(images))
    matched_row = np.full(len(matched), -1)
    has_match = matched >= 0
    matched_row[has_match] = candidates["class"].to_numpy(dtype=np.int64)[matched[has_match]]
    return FixedBoxScorer(class_true=truth_rows["class"].to_numpy(dtype=object), matched_row=matched_row,
                          mean_rescaled_giou=float(_rescaled_giou(pd.Series(giou)).mean()))


# ----------------------------------------------------------------------------- validation

def validate_submission(test_table: pd.DataFrame, submission: pd.DataFrame, *,
                        strict: bool = False, max_listed: int = 20) -> pd.DataFrame:
    """Every problem of a submission against the test table, one row per problem.

    Problem kinds: missing_column, duplicate_test_id (the test table itself repeats an id),
    missing_id, extra_id, duplicate_id (each row after the first; the scorer keeps the first),
    name_mismatch, non_finite_box, inverted_box (x2 < x1 or y2 < y1), zero_area_box and
    unknown_class (not one of constants.CLASSES, missing included). `detail` names the
    0-based submission row. Neither table is modified.

    Args:
        test_table: columns trustii_id, NAME (one row per expected cell).
        submission: the table to check (SUBMISSION_COLUMNS expected).
        strict: raise SubmissionError when any problem is found.
        max_listed: how many problems the SubmissionError message lists.

    Returns:
        DataFrame with columns problem, trustii_id, NAME, field, detail (empty when all is well).

    Raises:
        MetricInputError: the test table lacks trustii_id or NAME.
        SubmissionError: strict is set and there is at least one problem.
    """
    _require_columns(test_table, TEST_COLUMNS, "test table")
    present = [column for column in SUBMISSION_COLUMNS if column in submission.columns]
    found = [_missing_columns(submission), _duplicate_test_ids(test_table)]
    if {"trustii_id", "NAME"} <= set(present):
        found += [_missing_ids(test_table, submission), _extra_ids(test_table, submission),
                  _duplicate_ids(submission), _name_mismatches(test_table, submission)]
    found += _box_problems(submission, [c for c in BOX_COLUMNS if c in present])
    if "class" in present:
        found.append(_unknown_classes(submission))
    problems = pd.concat([_problem_frame([]), *found], ignore_index=True)
    if strict and len(problems):
        raise SubmissionError(problems, max_listed=max_listed)
    return problems


def _problem_frame(records: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records, columns=list(PROBLEM_COLUMNS)).astype(object)


def _row_values(submission: pd.DataFrame, rows: np.ndarray, column: str) -> list:
    if column not in submission.columns:
        return [None] * len(rows)
    return submission[column].to_numpy(dtype=object)[rows].tolist()


def _submission_problems(submission: pd.DataFrame, rows: np.ndarray, problem: str,
                         fields: list[str], details: list[str]) -> pd.DataFrame:
    ids = _row_values(submission, rows, "trustii_id")
    names = _row_values(submission, rows, "NAME")
    return _problem_frame([(problem, id_, name, field, f"row {row}: {detail}")
                           for row, id_, name, field, detail
                           in zip(rows.tolist(), ids, names, fields, details)])


def _missing_columns(submission: pd.DataFrame) -> pd.DataFrame:
    return _problem_frame([("missing_column", None, None, column, f"column {column!r} is absent")
                           for column in SUBMISSION_COLUMNS if column not in submission.columns])


def _duplicate_test_ids(test_table: pd.DataFrame) -> pd.DataFrame:
    counts = test_table["trustii_id"].value_counts(dropna=False)
    repeated = test_table.loc[test_table["trustii_id"].isin(counts.index[counts > 1])]
    return _problem_frame([
        ("duplicate_test_id", id_, name, "trustii_id",
         f"test row {row}: the test table lists this id {counts[id_]} times")
        for row, id_, name in zip(repeated.index.tolist(), repeated["trustii_id"].tolist(),
                                  repeated["NAME"].tolist())])


def _missing_ids(test_table: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    expected = test_table.drop_duplicates(subset="trustii_id")
    absent = expected.loc[~expected["trustii_id"].isin(submission["trustii_id"])]
    return _problem_frame([("missing_id", id_, name, "trustii_id", "no submission row for this id")
                           for id_, name in zip(absent["trustii_id"].tolist(),
                                                absent["NAME"].tolist())])


def _extra_ids(test_table: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    rows = np.flatnonzero(~submission["trustii_id"].isin(test_table["trustii_id"]).to_numpy())
    values = _row_values(submission, rows, "trustii_id")
    return _submission_problems(submission, rows, "extra_id", ["trustii_id"] * len(rows),
                                [f"trustii_id {value!r} is not in the test table"
                                 for value in values])


def _duplicate_ids(submission: pd.DataFrame) -> pd.DataFrame:
    ids = submission["trustii_id"].reset_index(drop=True)
    rows = np.flatnonzero(ids.duplicated(keep="first").to_numpy())
    first_row = ids.drop_duplicates(keep="first")
    first_of = dict(zip(first_row.tolist(), first_row.index.tolist()))
    details = [f"repeats the id of row {first_of.get(value, '?')}; the scorer keeps that first row"
               for value in ids.iloc[rows].tolist()]
    return _submission_problems(submission, rows, "duplicate_id", ["trustii_id"] * len(rows),
                                details)


def _name_mismatches(test_table: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    known = submission["trustii_id"].isin(test_table["trustii_id"]).to_numpy()
    test_pairs = pd.MultiIndex.from_arrays([test_table["trustii_id"].to_numpy(),
                                            test_table["NAME"].to_numpy(dtype=object)])
    pair_ok = pd.MultiIndex.from_arrays([submission["trustii_id"].to_numpy(),
                                         submission["NAME"].to_numpy(dtype=object)]).isin(test_pairs)
    rows = np.flatnonzero(known & ~pair_ok)
    concerned = test_table.loc[test_table["trustii_id"].isin(submission["trustii_id"].iloc[rows])]
    names_of = concerned.groupby("trustii_id", sort=False)["NAME"].agg(lambda n: sorted(set(n)))
    expected = [names_of.get(value, []) for value in _row_values(submission, rows, "trustii_id")]
    given = _row_values(submission, rows, "NAME")
    details = [f"NAME {name!r} but the test table gives {' or '.join(map(repr, names))}"
               for name, names in zip(given, expected)]
    return _submission_problems(submission, rows, "name_mismatch", ["NAME"] * len(rows), details)


def _box_problems(submission: pd.DataFrame, columns: list[str]) -> list[pd.DataFrame]:
    coords = {c: pd.to_numeric(submission[c], errors="coerce").to_numpy(dtype=np.float64)
              for c in columns}
    found = []
    for column in columns:
        rows = np.flatnonzero(~np.isfinite(coords[column]))
        raw = _row_values(submission, rows, column)
        found.append(_submission_problems(submission, rows, "non_finite_box", [column] * len(rows),
                                          [f"{column} = {value!r}" for value in raw]))
    for low, high in (("x1", "x2"), ("y1", "y2")):
        if low in coords and high in coords:
            found += _degenerate_extents(submission, coords[low], coords[high], low, high)
    return found


def _degenerate_extents(submission: pd.DataFrame, low: np.ndarray, high: np.ndarray,
                        low_name: str, high_name: str) -> list[pd.DataFrame]:
    found = []
    for problem, rows in (("inverted_box", np.flatnonzero(high < low)),
                          ("zero_area_box", np.flatnonzero(high == low))):
        relation = "<" if problem == "inverted_box" else "=="
        details = [f"{high_name} = {high_value} {relation} {low_name} = {low_value}"
                   for high_value, low_value in zip(high[rows].tolist(), low[rows].tolist())]
        found.append(_submission_problems(submission, rows, problem,
                                          [f"{low_name},{high_name}"] * len(rows), details))
    return found


def _unknown_classes(submission: pd.DataFrame) -> pd.DataFrame:
    values = submission["class"].to_numpy(dtype=object)
    rows = np.flatnonzero(~pd.Series(values).isin(CLASSES).to_numpy())
    return _submission_problems(submission, rows, "unknown_class", ["class"] * len(rows),
                                [f"class {values[row]!r} is not one of the {len(CLASSES)} codes"
                                 for row in rows.tolist()])


def count_problems(problems: pd.DataFrame) -> dict[str, int]:
    """Problem counts per kind (JSON-serialisable), in order of first appearance."""
    return {str(kind): int(n) for kind, n in problems["problem"].value_counts(sort=False).items()}
