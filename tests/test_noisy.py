"""Noisy-box evidence and decisions on hand-made OOF tables: each defect family caught, clean images
and silent detectors left alone, the FDR rules, the safety cap, defect scoring and the galleries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from leukoflow import tables
from leukoflow.detection import evidence, gallery, noisy

EVIDENCE = {"match_iou": 0.5, "detect_p": 0.5, "unmatched_overlap": 0.3, "border_px": 2}
DECISION = {"target_fdr": 0.2, "max_excluded_fraction": 1.0}
SIDE = 100


def truth(*rows):
    """rows: (row, name, x1, y1, x2, y2)."""
    frame = pd.DataFrame(rows, columns=["row", "name", "x1", "y1", "x2", "y2"]).astype(
        {"row": "int64", "x1": float, "y1": float, "x2": float, "y2": float})
    return frame.assign(label="PNN", class_idx=0, clipped=False)[tables.CURATED_BOXES.column_names]


def detections(*rows, fold=0):
    """rows: (name, x1, y1, x2, y2, score)."""
    frame = pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score"])
    return frame.assign(detector="det1", fold=fold)[tables.DETECTIONS.column_names].astype(
        {"x1": float, "y1": float, "x2": float, "y2": float, "score": float, "fold": "int64"})


def folds_for(names):
    return pd.DataFrame({"name": list(names), "fold": 0})


def images_for(names, path=""):
    return pd.DataFrame({"name": list(names), "path": path, "width": SIDE, "height": SIDE})


def clean_background(n=24):
    """n clean single-cell images of sides 36-44 px whose detections fit their boxes at IoU 0.70-0.95
    (the geometry and size null)."""
    rows, found = [], []
    for k in range(n):
        name, shrink, side = f"clean{k:02d}.jpg", 1 + (k % 6), 36 + (k % 9)  # IoU about 0.95 down to 0.72
        rows.append((1000 + k, name, 20, 20, 20 + side, 20 + side))
        found.append((name, 20 + shrink, 20, 20 + side, 20 + side - shrink, 0.9))
    return rows, found


CASES = {
    # one cell, confidently detected: nothing to say
    "clean.jpg": ([(0, "clean.jpg", 10, 10, 50, 50)], [("clean.jpg", 11, 11, 50, 50, 0.95)], set()),
    # a red cell boxed as a white cell, beside a confirmed cell: only a weak detection on it
    "red.jpg": ([(1, "red.jpg", 10, 10, 50, 50), (2, "red.jpg", 60, 60, 80, 80)],
                [("red.jpg", 10, 10, 50, 50, 0.9), ("red.jpg", 60, 60, 80, 80, 0.05)], {("unconfirmed_box", 2)}),
    # a box far too large: the confident detection lies wholly inside it (IoU 0.09)
    "big.jpg": ([(3, "big.jpg", 0, 0, 99, 99)], [("big.jpg", 35, 35, 65, 65, 0.9)], {("box_geometry", 3)}),
    # a box shifted by half its width (IoU 0.33)
    "shifted.jpg": ([(4, "shifted.jpg", 10, 10, 50, 50)], [("shifted.jpg", 30, 10, 70, 50, 0.9)],
                    {("box_geometry", 4)}),
    # a box that covers only the middle of the cell (IoU 0.25)
    "small.jpg": ([(5, "small.jpg", 20, 20, 40, 40)], [("small.jpg", 10, 10, 50, 50, 0.9)], {("box_geometry", 5)}),
    # a detector that boxes only part of a normal-sized cell: the nested pair alone condemns nothing
    "partial.jpg": ([(9, "partial.jpg", 10, 10, 50, 50)], [("partial.jpg", 25, 25, 45, 45, 0.9)], set()),
    # an unannotated cell: a confident detection away from every box
    "extra.jpg": ([(6, "extra.jpg", 10, 10, 50, 50)],
                  [("extra.jpg", 10, 10, 50, 50, 0.9), ("extra.jpg", 60, 60, 90, 90, 0.8)], {("unannotated_cell", -1)}),
    # a red cell beside a cell the detector sees but boxes loosely (IoU 0.42, below the match): the
    # detector is active on the image, so the red cell's empty box still condemns it
    "red_loose.jpg": ([(10, "red_loose.jpg", 10, 10, 50, 50), (11, "red_loose.jpg", 60, 60, 80, 80)],
                      [("red_loose.jpg", 20, 20, 46, 46, 0.9)], {("unconfirmed_box", 11)}),
    # a neighbour's confident box grazes the annotation (5 % of either box): an unannotated cell, and no
    # verdict on the annotation's geometry
    "graze.jpg": ([(12, "graze.jpg", 10, 10, 50, 50)], [("graze.jpg", 48, 10, 88, 50, 0.9)],
                  {("unannotated_cell", -1)}),
    # a silent detector: nothing found on either annotated cell, so nothing condemns them
    "silent.jpg": ([(7, "silent.jpg", 10, 10, 50, 50), (8, "silent.jpg", 60, 60, 90, 90)], [], set()),
}


def run_case(name):
    clean_rows, clean_found = clean_background()
    truth_rows, detection_rows, _ = CASES[name]
    boxes = truth(*clean_rows, *truth_rows)
    names = sorted(set(boxes["name"]))
    found, cap_bound = noisy.find_noisy_boxes(detections(*clean_found, *detection_rows), boxes, folds_for(names),
                                              images_for(names), **EVIDENCE, **DECISION)
    return found, cap_bound


@pytest.mark.parametrize("name", list(CASES))
def test_each_defect_family_is_caught_and_nothing_else(name):
    found, cap_bound = run_case(name)
    tables.validate(found, tables.NOISY_FLAGS)
    assert set(zip(found["reason"], found["row"])) == CASES[name][2]
    assert set(found["name"]) <= {name} and not cap_bound
    assert found["excluded"].all()


def test_all_clean_input_flags_nothing():
    rows, found = clean_background(40)
    boxes = truth(*rows)
    names = sorted(set(boxes["name"]))
    flags, cap_bound = noisy.find_noisy_boxes(detections(*found), boxes, folds_for(names), images_for(names),
                                              **EVIDENCE, **DECISION)
    assert len(flags) == 0 and not cap_bound


def test_an_unannotated_cell_is_found_by_a_detector_that_boxes_every_cell_twice():
    """Every cell gets a tight box (0.95) and a second, looser one (0.9, IoU 0.43); junk on the
    background scores 0.3. The second box never confirms an annotation (one-to-one matching), so
    P(confirms a box) at 0.9 is 0, which would hide a cell that nobody annotated; P(a cell lies
    there), calibrated on whether a detection lies on an annotated cell, is 1 at 0.9."""
    rows, found = [], []
    for k in range(25):
        name = "extra.jpg" if k == 24 else f"twice{k:02d}.jpg"
        rows.append((2000 + k, name, 20, 20, 60, 60))
        found += [(name, 21, 21, 60, 60, 0.95), (name, 32, 32, 64, 64, 0.9), (name, 70, 70, 95, 95, 0.3)]
    found.append(("extra.jpg", 66, 2, 98, 34, 0.9))  # the unannotated cell
    boxes, table = truth(*rows), detections(*found)
    names = sorted(set(boxes["name"]))
    assert evidence.confirms_a_box(table, boxes, 0.5).sum() == 25
    assert evidence.lies_on_a_cell(table, boxes, 0.3).sum() == 50
    flags, _ = noisy.find_noisy_boxes(table, boxes, folds_for(names), images_for(names), **EVIDENCE, **DECISION)
    assert set(zip(flags["name"], flags["reason"])) == {("extra.jpg", "unannotated_cell")}


def realistic_background(n=200):
    """n clean single-cell images whose detections fit their boxes with logit-IoUs at the normal quantiles
    of N(1.5, 0.6) (IoU about 0.6 to 0.95) and sides 40-48 px: the geometry null at the demo's size."""
    rows, found = [], []
    for k in range(n):
        name, side = f"bulk{k:03d}.jpg", 40 + (k % 9)
        iou = 1 / (1 + np.exp(-(1.5 + 0.6 * stats.norm.ppf((k + 0.5) / n))))
        rows.append((2000 + k, name, 20, 20, 20 + side, 20 + side))
        found.append((name, 20 + side * (1 - iou), 20, 20 + side, 20 + side, 0.9))
    return rows, found


GEOMETRY_CASES = {  # name: (annotation, detection, flagged) at the demo's size of about 200 boxes
    "oversized": ((0, 0, 99, 99), (35, 35, 65, 65), True),  # IoU 0.09, box 5x its class's area
    "undersized": ((20, 20, 40, 40), (10, 10, 50, 50), True),  # IoU 0.25, box 1/4 of its class's area
    "shifted": ((10, 10, 50, 50), (30, 10, 70, 50), True),  # IoU 0.33
    "partial_detection": ((10, 10, 50, 50), (25, 25, 45, 45), False),  # normal-sized box, detector boxed a part
}


def find_at_realistic_size(*cases, n=200):
    rows, found = realistic_background(n)
    for k, (box, detection) in enumerate(cases):
        rows.append((k, f"case{k}.jpg", *box))
        found.append((f"case{k}.jpg", *detection, 0.9))
    boxes = truth(*rows)
    names = sorted(set(boxes["name"]))
    return noisy.find_noisy_boxes(detections(*found), boxes, folds_for(names), images_for(names),
                                  **EVIDENCE, **DECISION)


@pytest.mark.parametrize("case", list(GEOMETRY_CASES))
def test_geometry_decision_at_realistic_size(case):
    box, detection, flagged = GEOMETRY_CASES[case]
    flags, _ = find_at_realistic_size((box, detection))
    assert set(zip(flags["reason"], flags["name"])) == ({("box_geometry", "case0.jpg")} if flagged else set())


def test_geometry_decision_all_clean_at_realistic_size_flags_nothing():
    flags, cap_bound = find_at_realistic_size()
    assert len(flags) == 0 and not cap_bound


def test_geometry_null_ignores_a_tail_of_defects():
    """Twenty shifted boxes (IoU 0.33-0.5, like the demo's geometric defects) among 200 clean ones: they
    would widen a median/MAD null until none passes the FDR bar; the MCD null keeps the clean scale."""
    shifts = [((10, 10, 50, 50), (10 + d, 10, 50 + d, 50)) for d in np.linspace(13, 20, 20)]
    flags, _ = find_at_realistic_size(*shifts)
    assert set(flags["name"]) == {f"case{k}.jpg" for k in range(20)}
    assert set(flags["reason"]) == {"box_geometry"}


def test_tail_fdr_uses_the_null_proportion():
    pvalues = np.array([0.001, 0.004, 0.02, 0.028, *np.linspace(0.05, 1, 26)])
    assert noisy.null_proportion(np.linspace(0.3, 1, 100)) == 1.0  # mostly large p-values: capped at 1
    assert noisy.null_proportion(pvalues) == pytest.approx(14 / 30 / 0.5)  # 14 of 30 above 0.5
    # BH alone stops at 0.02 (0.028 * 30 / 4 = 0.21); with pi0 = 0.93 the fourth passes (0.196)
    assert (stats.false_discovery_control(pvalues, method="bh") <= 0.2).sum() == 3
    assert noisy.select_by_tail_fdr(pvalues, 0.2).tolist() == [True] * 4 + [False] * 26
    assert not noisy.select_by_tail_fdr(np.linspace(0.01, 1, 200), 0.2).any()


def test_oversized_box_records_its_geometry():
    found, _ = run_case("big.jpg")
    flag = found.iloc[0]
    assert flag["det_inside"] == pytest.approx(1.0)
    assert flag["ann_inside"] == pytest.approx(900 / 99 ** 2)
    assert flag["iou"] == pytest.approx(900 / 99 ** 2)


def test_unannotated_cell_cut_by_the_border_is_marked():
    boxes = truth((0, "edge.jpg", 10, 10, 50, 50))
    found = detections(("edge.jpg", 10, 10, 50, 50, 0.9), ("edge.jpg", 80, 40, 99, 70, 0.9))
    flags, _ = noisy.find_noisy_boxes(found, boxes, folds_for(["edge.jpg"]), images_for(["edge.jpg"]),
                                      **EVIDENCE, **DECISION)
    cell = flags[flags["reason"] == "unannotated_cell"].iloc[0]
    assert bool(cell["at_border"]) and cell["n_detected"] == 2 and cell["n_annotated"] == 1


@pytest.mark.parametrize(("evidence", "selected"), [
    ([0.95, 0.9, 0.5, 0.1, 0.85], [True, True, False, False, True]),
    # a set-average rule would admit 0.6 beside certain items (mean miss 0.175); on its own it is 40 % clean
    ([0.95, 0.9, 0.6, 0.1, 0.85], [True, True, False, False, True]),
    ([0.8, 0.79], [True, False]),  # the bound itself: P(clean) 0.2 is within the target
    ([0.3] * 5, [False] * 5),
    ([1.0] * 9 + [0.0], [True] * 9 + [False]),
])
def test_local_fdr_rule_flags_only_items_likely_enough_on_their_own(evidence, selected):
    assert noisy.select_by_local_fdr(np.array(evidence), 0.2).tolist() == selected


def test_safety_cap_keeps_the_strongest_and_says_it_bound():
    clean_rows, clean_found = clean_background()
    rows, found = list(clean_rows), list(clean_found)
    for k, score in enumerate([0.99, 0.95, 0.9]):
        name = f"extra{k}.jpg"
        rows.append((k, name, 10, 10, 50, 50))
        found += [(name, 10, 10, 50, 50, 0.9), (name, 60, 60, 90, 90, score)]
    boxes = truth(*rows)
    names = sorted(set(boxes["name"]))
    cap = {**DECISION, "max_excluded_fraction": 2 / len(names)}
    flags, cap_bound = noisy.find_noisy_boxes(detections(*found), boxes, folds_for(names), images_for(names),
                                              **EVIDENCE, **cap)
    assert cap_bound and flags["name"].nunique() == 3
    assert noisy.excluded_images(flags) == ["extra0.jpg", "extra1.jpg"]


def test_calibration_falls_back_to_the_other_folds_and_then_to_raw_scores():
    boxes = truth((0, "a.jpg", 10, 10, 50, 50), (1, "b.jpg", 10, 10, 50, 50))
    # fold 1: a score-0.3 box matches its cell and a score-0.2 box is junk; fold 0 holds the same scores
    found = pd.concat([detections(("a.jpg", 10, 10, 50, 50, 0.3), ("a.jpg", 60, 60, 90, 90, 0.2), fold=0),
                       detections(("b.jpg", 10, 10, 50, 50, 0.3), ("b.jpg", 60, 60, 90, 90, 0.2), fold=1)],
                      ignore_index=True)
    # one image per fold model: nothing of its own to calibrate with, so the other fold's images do
    assert evidence.calibrate_out_of_fold(found, evidence.confirms_a_box(found, boxes, 0.5)).tolist() == [1.0, 0.0, 1.0, 0.0]
    only_a = found[found["name"] == "a.jpg"]
    # a single image: nothing at all to calibrate with, raw scores kept
    assert evidence.calibrate_out_of_fold(only_a, evidence.confirms_a_box(only_a, boxes, 0.5)).tolist() == only_a["score"].tolist()


def test_calibration_follows_each_fold_models_own_score_scale():
    """Fold 0's model scores cells 0.3 and junk 0.2; fold 1's scores cells 0.8 and junk 0.3. Pooled, a
    0.3 would be a coin toss; each model's own other images say what its 0.3 means."""
    rows, found = [], []
    for fold, (cell, junk) in enumerate([(0.3, 0.2), (0.8, 0.3)]):
        for k in range(6):
            name = f"f{fold}_{k}.jpg"
            rows.append((10 * fold + k, name, 10, 10, 50, 50))
            found.append(detections((name, 10, 10, 50, 50, cell), (name, 60, 60, 90, 90, junk), fold=fold))
    table = pd.concat(found, ignore_index=True)
    calibrated = evidence.calibrate_out_of_fold(table, evidence.confirms_a_box(table, truth(*rows), 0.5))
    real = table["x1"].to_numpy() == 10
    assert (calibrated[real] == 1.0).all() and (calibrated[~real] == 0.0).all()


def test_score_against_defects_per_kind():
    flags = pd.DataFrame({"name": ["a.jpg", "b.jpg", "c.jpg"], "row": [1, -1, 3],
                          "reason": ["unconfirmed_box", "unannotated_cell", "box_geometry"],
                          "excluded": [True, True, True]})
    defects = pd.DataFrame({"kind": ["red_cell_box", "unannotated_border_cell", "wrong_label", "oversized_box",
                                     "shifted_box"],
                            "name": ["a.jpg", "b.jpg", "d.jpg", "gone.jpg", "e.jpg"], "source": "", "row": -1,
                            "detail": ""})
    scores = noisy.score_against_defects(flags, defects, evaluated=["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    # wrong_label is not visible to a box detector; gone.jpg had no OOF output; c.jpg is a false flag
    assert scores["noisy_precision"] == pytest.approx(2 / 3)
    assert scores["noisy_recall"] == pytest.approx(2 / 3)
    assert scores["noisy_by_kind"]["red_cell_box"] == {"n_true": 1, "recall": 1.0, "precision": 1.0}
    assert scores["noisy_by_kind"]["shifted_box"] == {"n_true": 1, "recall": 0.0, "precision": 0.0}
    assert scores["noisy_by_kind"]["oversized_box"]["n_true"] == 0
    assert scores["noisy_clipped_box_images"] == 0
    table = noisy.by_kind_table(scores["noisy_by_kind"])
    assert set(table["kind"]) == set(noisy.VISIBLE_DEFECTS)


def test_galleries_one_png_per_family(tmp_path):
    image_path = tmp_path / "a.jpg"
    Image.fromarray(np.full((SIDE, SIDE, 3), 200, np.uint8)).save(image_path)
    boxes = truth((0, "a.jpg", 10, 10, 50, 50))
    found, _ = noisy.find_noisy_boxes(detections(("a.jpg", 10, 10, 50, 50, 0.9), ("a.jpg", 60, 60, 90, 90, 0.9)),
                                      boxes, folds_for(["a.jpg"]), images_for(["a.jpg"]), **EVIDENCE, **DECISION)
    written = gallery.write_galleries(found, images_for(["a.jpg"], str(image_path)), tmp_path / "gallery",
                                      noisy.FAMILIES, boxes=boxes, tiles=4, tile_px=32)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == sorted(f"{f}.png" for f in noisy.FAMILIES)
    assert Image.open(tmp_path / "gallery" / "box_geometry.png").size == (32, 32)  # nothing flagged: blank tile
    assert Image.open(tmp_path / "gallery" / "unannotated_cell.png").size == (32, 32)


def test_cleanlab_object_detection_scorer_runs_side_by_side():
    clean_rows, clean_found = clean_background()
    boxes = truth(*clean_rows, (3, "big.jpg", 0, 0, 99, 99))
    found = detections(*clean_found, ("big.jpg", 35, 35, 65, 65, 0.9))
    flagged = noisy.cleanlab_flagged_images(found, boxes, sorted(set(boxes["name"])))
    assert flagged <= set(boxes["name"])
    defects = pd.DataFrame({"kind": ["oversized_box"], "name": ["big.jpg"], "source": "", "row": [3], "detail": ""})
    compared = noisy.compare_with_cleanlab(flagged, defects, set(boxes["name"]))
    assert compared["flagged_images"] == len(flagged) and compared["recall"] in (0.0, 1.0)


@pytest.mark.parametrize(("flag_rows", "precision", "clipped"), [
    ([7], 1.0, 1),  # flagged only on the clipped box: neither a hit nor a false flag
    ([7, 8], 0.5, 0),  # also flagged on another box of the image: a false flag
    ([8], 0.5, 0),
])
def test_flags_on_a_clipped_out_of_image_box_count_as_neither(flag_rows, precision, clipped):
    flags = pd.DataFrame({"name": ["a.jpg"] + ["c.jpg"] * len(flag_rows), "row": [1, *flag_rows],
                          "reason": ["unconfirmed_box"] + ["box_geometry"] * len(flag_rows), "excluded": True})
    defects = pd.DataFrame({"kind": ["red_cell_box", "out_of_image_box"], "name": ["a.jpg", "c.jpg"], "source": "",
                            "row": [1, 7], "detail": ""})
    scores = noisy.score_against_defects(flags, defects, evaluated=["a.jpg", "b.jpg", "c.jpg"])
    assert scores["noisy_precision"] == pytest.approx(precision) and scores["noisy_recall"] == 1.0
    assert scores["noisy_clipped_box_images"] == clipped
