"""Noisy-box flags on hand-made OOF tables, the exclusion cap, defect scoring and the galleries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoflow.detection import noisy

from leukoflow import tables

RULES = {"confirm_score": 0.25, "match_iou": 0.5, "detect_score": 0.5, "unmatched_iou": 0.1}


def truth(*rows):
    """rows: (row, name, x1, y1, x2, y2)."""
    frame = pd.DataFrame(rows, columns=["row", "name", "x1", "y1", "x2", "y2"]).astype({"x1": float, "y1": float,
                                                                                     "x2": float, "y2": float})
    return frame.assign(label="PNN", class_idx=0, clipped=False)


def detections(*rows):
    """rows: (name, x1, y1, x2, y2, score)."""
    frame = pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score"])
    return frame.assign(detector="det1", fold=0)[tables.DETECTIONS.column_names].astype(
        {"x1": float, "y1": float, "x2": float, "y2": float})


def folds_for(names):
    return pd.DataFrame({"name": names, "fold": 0})


def reasons(flags, name):
    return sorted(flags.loc[flags["name"] == name, "reason"])


CASES = {
    # one cell, confidently detected: nothing to say
    "clean.jpg": ([(0, "clean.jpg", 10, 10, 50, 50)], [("clean.jpg", 11, 11, 50, 50, 0.95)], []),
    # a red cell boxed as a white cell: only a weak detection there
    "red.jpg": ([(1, "red.jpg", 10, 10, 50, 50), (2, "red.jpg", 60, 60, 80, 80)],
                [("red.jpg", 10, 10, 50, 50, 0.9), ("red.jpg", 60, 60, 80, 80, 0.1)],
                ["count_mismatch", "unconfirmed_box"]),
    # a box far too large: the confident detection inside it overlaps it at IoU 0.04, so the box is
    # unconfirmed and the detection looks unannotated
    "big.jpg": ([(3, "big.jpg", 0, 0, 99, 99)], [("big.jpg", 40, 40, 60, 60, 0.9)],
                ["unannotated_cell", "unconfirmed_box"]),
    # an unannotated cell: a confident detection away from every box
    "extra.jpg": ([(4, "extra.jpg", 10, 10, 50, 50)],
                  [("extra.jpg", 10, 10, 50, 50, 0.9), ("extra.jpg", 70, 70, 95, 95, 0.8)],
                  ["count_mismatch", "unannotated_cell"]),
    # no output at all for an annotated image
    "none.jpg": ([(5, "none.jpg", 10, 10, 50, 50)], [], ["count_mismatch", "unconfirmed_box"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flag_rules_on_hand_made_oof(name):
    truth_rows, detection_rows, expected = CASES[name]
    found = noisy.find_noisy_boxes(detections(*detection_rows) if detection_rows else detections(),
                                   truth(*truth_rows), folds_for([name]), **RULES,
                                   exclude_reasons=["unconfirmed_box", "unannotated_cell"],
                                   max_excluded_fraction=1.0)
    assert reasons(found, name) == sorted(expected)
    tables.validate(found, tables.NOISY_FLAGS)


def test_big_box_is_not_an_unannotated_cell():
    # with a lower unmatched_iou the detection inside the oversized box (IoU 400/9801) counts as matched
    found = noisy.find_noisy_boxes(detections(("big.jpg", 40, 40, 60, 60, 0.9)), truth((3, "big.jpg", 0, 0, 99, 99)),
                                   folds_for(["big.jpg"]), **{**RULES, "unmatched_iou": 0.01},
                                   exclude_reasons=["unconfirmed_box"], max_excluded_fraction=1.0)
    assert "unannotated_cell" not in set(found["reason"])
    assert found["row"].max() == 3


def test_unconfirmed_flag_records_the_box_and_best_score():
    found = noisy.find_noisy_boxes(detections(("red.jpg", 60, 60, 80, 80, 0.1)),
                                   truth((2, "red.jpg", 60, 60, 80, 80)), folds_for(["red.jpg"]), **RULES,
                                   exclude_reasons=["unconfirmed_box"], max_excluded_fraction=1.0)
    flag = found[found["reason"] == "unconfirmed_box"].iloc[0]
    assert (flag["row"], flag["x1"], flag["score"], flag["excluded"]) == (2, 60.0, 0.1, True)


def test_exclusion_cap_keeps_strongest_evidence():
    names = [f"img{i}.jpg" for i in range(10)]
    boxes = truth(*[(i, name, 10, 10, 50, 50) for i, name in enumerate(names)])
    # image i is confirmed at score i/10: lower score = stronger evidence against the annotation
    dets = detections(*[(name, 10, 10, 50, 50, i / 10) for i, name in enumerate(names)])
    found = noisy.find_noisy_boxes(dets, boxes, folds_for(names), **{**RULES, "confirm_score": 0.5},
                                   exclude_reasons=["unconfirmed_box"], max_excluded_fraction=0.2)
    assert noisy.excluded_images(found) == ["img0.jpg", "img1.jpg"]
    assert found["name"].nunique() == 5  # scores 0.0-0.4 are below confirm_score: all audited, two excluded


def test_unknown_exclude_reason_is_rejected():
    with pytest.raises(ValueError, match="exclude_reasons"):
        noisy.find_noisy_boxes(detections(), truth(), folds_for([]), **RULES, exclude_reasons=["typo"],
                               max_excluded_fraction=1.0)


def test_empty_inputs_give_an_empty_valid_table():
    found = noisy.find_noisy_boxes(detections(), truth(), folds_for([]), **RULES, exclude_reasons=[],
                                   max_excluded_fraction=1.0)
    assert len(found) == 0
    tables.validate(found, tables.NOISY_FLAGS)


def test_score_against_defects_counts_visible_kinds_only():
    flags = pd.DataFrame({"name": ["a.jpg", "b.jpg", "c.jpg"], "reason": ["unconfirmed_box", "unannotated_cell",
                                                                          "unconfirmed_box"],
                          "excluded": [True, True, True]})
    defects = pd.DataFrame({"kind": ["red_cell_box", "unannotated_border_cell", "wrong_label", "oversized_box"],
                            "name": ["a.jpg", "b.jpg", "d.jpg", "gone.jpg"], "source": "", "row": -1, "detail": ""})
    scores = noisy.score_against_defects(flags, defects, evaluated=["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    # wrong_label is not visible to a box detector; gone.jpg had no OOF output
    assert scores["noisy_precision"] == pytest.approx(2 / 3)
    assert scores["noisy_recall"] == 1.0
    assert set(scores["noisy_per_kind"]) == {"red_cell_box", "unannotated_border_cell"}


def test_galleries_one_png_per_reason(tmp_path):
    image_path = tmp_path / "a.jpg"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image_path)
    images = pd.DataFrame({"name": ["a.jpg"], "path": [str(image_path)]})
    found = noisy.find_noisy_boxes(detections(("a.jpg", 1, 1, 9, 9, 0.9)), truth((0, "a.jpg", 30, 30, 60, 60)),
                                   folds_for(["a.jpg"]), **RULES, exclude_reasons=[], max_excluded_fraction=0)
    written = noisy.write_galleries(found, images, tmp_path / "gallery", max_tiles=4, tile=32,
                                    boxes=truth((0, "a.jpg", 30, 30, 60, 60)))
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == [f"{r}.png" for r in sorted(noisy.REASONS)]
    assert Image.open(tmp_path / "gallery" / "unconfirmed_box.png").size == (32, 32)


def test_unconfirmed_box_beside_a_confident_detection_outranks_a_silent_detector():
    boxes = truth((0, "red.jpg", 10, 10, 50, 50), (1, "red.jpg", 60, 60, 90, 90), (2, "miss.jpg", 10, 10, 50, 50))
    dets = detections(("red.jpg", 10, 10, 50, 50, 0.9), ("red.jpg", 60, 60, 90, 90, 0.05),
                      ("miss.jpg", 10, 10, 50, 50, 0.01))
    found = noisy.find_noisy_boxes(dets, boxes, folds_for(["red.jpg", "miss.jpg"]), **RULES,
                                   exclude_reasons=["unconfirmed_box"], max_excluded_fraction=0.5)
    assert noisy.excluded_images(found) == ["red.jpg"]
