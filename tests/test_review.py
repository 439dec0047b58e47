"""Review round trip: export flagged items (Label Studio, COCO) -> a reviewer edits -> import -> the
overridden boxes and labels are what detector 2's dataset and the classifier crops see."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoflow import cli, constants, tables
from leukoflow.detection import crops as crops_lib
from leukoflow.detection import datasets, review

SIDE = 100


@pytest.fixture()
def results(tmp_path):
    """A results/ folder with curated images and boxes, noisy flags and label flags."""
    root = tmp_path / "results"
    (root / "curation").mkdir(parents=True)
    (root / "detection").mkdir()
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for name in names:
        Image.fromarray(np.full((SIDE, SIDE, 3), 200, np.uint8)).save(tmp_path / name)
    images = pd.DataFrame({"name": names, "split": "train", "path": [str(tmp_path / n) for n in names],
                           "width": SIDE, "height": SIDE, "pixel_mean": 200.0, "pixel_std": 1.0, "group_id": -1,
                           "role": "unique", "train_test_duplicate": False, "keep": True})
    boxes = pd.DataFrame({"row": [0, 1, 2, 3, 4], "name": ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                          "x1": [10.0, 60, 10, 0, 20], "y1": [10.0, 60, 10, 0, 20], "x2": [50.0, 80, 50, 99, 60],
                          "y2": [50.0, 80, 50, 99, 60], "label": ["PNN", "PNN", "LY", "MO", "PNN"],
                          "class_idx": 0, "clipped": False})
    boxes["class_idx"] = boxes["label"].map(constants.CLASS_TO_INDEX)
    flags = pd.DataFrame({"name": ["a.jpg", "c.jpg", "b.jpg"], "fold": 0,
                          "reason": ["unconfirmed_box", "box_geometry", "unannotated_cell"], "row": [1, 3, -1],
                          "x1": [60.0, 0, 60], "y1": [60.0, 0, 60], "x2": [80.0, 99, 90], "y2": [80.0, 99, 90],
                          "iou": [0.0, 0.1, 0.0], "score": [0.05, 0.9, 0.9], "evidence": [0.9, 0.99, 0.9],
                          "det_inside": [np.nan, 1.0, np.nan], "ann_inside": [np.nan, 0.1, np.nan],
                          "area_z": [0.0, 3.0, np.nan], "at_border": False, "n_annotated": [2, 1, 1],
                          "n_detected": [1, 1, 2], "excluded": True})
    labels = pd.DataFrame({"crop_id": ["b.jpg#0"], "name": ["b.jpg"], "row": [2], "label": ["LY"], "proposed": ["MO"],
                           "quality": [0.01], "issue": [True], "action": ["relabel"]})
    tables.write_table(images[tables.CURATED_IMAGES.column_names], root / "curation" / "images.parquet",
                       tables.CURATED_IMAGES)
    tables.write_table(boxes, root / "curation" / "boxes.parquet", tables.CURATED_BOXES)
    tables.write_table(flags, root / "detection" / "noisy_flags.parquet", tables.NOISY_FLAGS)
    tables.write_table(labels, root / "detection" / "label_flags.parquet", tables.LABEL_FLAGS)
    return root


def reviewer_accepts_with_edits(tasks):
    """The reviewer takes the proposals, then moves c.jpg's box onto its cell; a.jpg/b.jpg as proposed."""
    reviewed = copy.deepcopy(tasks)
    for task in reviewed:
        result = copy.deepcopy(task["predictions"][0]["result"])
        if task["data"]["name"] == "c.jpg":
            result[0]["value"].update(x=30.0, y=30.0, width=40.0, height=40.0)
        task["annotations"] = [{"result": result}]
    return reviewed


def test_review_round_trip_reaches_detector_2_and_the_crops(results, tmp_path):
    out = tmp_path / "review"
    assert cli.main(["review", "export", "--results", str(results), "--out", str(out)]) == 0
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert [t["data"]["name"] for t in tasks] == ["a.jpg", "b.jpg", "c.jpg"]
    by_name = {t["data"]["name"]: t for t in tasks}
    # proposals: the red-cell box of a.jpg is left out, b.jpg relabelled and given its unannotated cell
    assert [r["id"] for r in by_name["a.jpg"]["predictions"][0]["result"]] == ["row0"]
    assert {r["value"]["rectanglelabels"][0] for r in by_name["b.jpg"]["predictions"][0]["result"]} == {"MO"}
    assert "unannotated_cell" in by_name["b.jpg"]["data"]["evidence"]
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == 4 and len(coco["images"]) == 3

    export = tmp_path / "export.json"
    export.write_text(json.dumps(reviewer_accepts_with_edits(tasks)))
    overrides_path = tmp_path / "overrides.csv"
    assert cli.main(["review", "import", str(export), "--results", str(results), "--out", str(overrides_path)]) == 0
    overrides = tables.read_table(overrides_path, tables.REVIEW_OVERRIDES)
    assert sorted(zip(overrides["name"], overrides["action"])) == [
        ("a.jpg", "delete_box"), ("b.jpg", "add_box"), ("b.jpg", "relabel"), ("c.jpg", "set_box")]

    paths = {k: str(tmp_path / f"{k}.parquet") for k in ("reviewed_boxes", "reviewed_flags")}
    summary = review.apply_review(curated_boxes=str(results / "curation" / "boxes.parquet"),
                                  noisy=str(results / "detection" / "noisy_flags.parquet"), overrides=[str(overrides_path)],
                                  review_ledger=str(tmp_path / "ledger.csv"), **paths)
    assert summary["review_overrides"] == 4
    ledger = pd.read_csv(tmp_path / "ledger.csv")
    assert sorted(ledger["reason"]) == ["review_add_box", "review_delete_box", "review_relabel", "review_set_box"]
    boxes = tables.read_table(paths["reviewed_boxes"], tables.CURATED_BOXES)
    assert 1 not in set(boxes["row"]) and boxes.loc[boxes["row"] == 2, "label"].item() == "MO"
    assert boxes.loc[boxes["row"] == 3, ["x1", "y1", "x2", "y2"]].values.tolist() == [[30, 30, 70, 70]]
    assert len(boxes[boxes["name"] == "b.jpg"]) == 2  # the added cell

    # detector 2 sees every reviewed image again, with the reviewed boxes
    folds = pd.DataFrame({"name": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "fold": [0, 1, 0, 1]})
    folds_path = tmp_path / "folds.parquet"
    folds.assign(group_id=-1, n_boxes=1, multilabel="0", surface_bin=0, box_ratio_bin=0, mean_bin=0,
                 std_bin=0)[tables.FOLDS.column_names].to_parquet(folds_path)
    exported = datasets.export_yolo(images=str(results / "curation" / "images.parquet"), boxes=paths["reviewed_boxes"],
                                    folds=str(folds_path), n_folds=2, datasets=str(tmp_path / "yolo"),
                                    noisy=[paths["reviewed_flags"]], backgrounds=[])
    assert exported["excluded_images"] == 0
    label = (tmp_path / "yolo" / "fold0" / "val" / "labels" / "c.txt").read_text()
    assert label == "0 0.500000 0.500000 0.400000 0.400000\n"
    # and the crops: b.jpg's cell with its new label, no crop for the deleted box
    fitted = boxes.assign(detector="det2", fold=0, rank=boxes.groupby("name").cumcount(), score=0.9, padded=False)
    table, _ = crops_lib.train_crops(fitted[tables.OOF_BOXES.column_names], boxes,
                                     tables.read_table(results / "curation" / "images.parquet", tables.CURATED_IMAGES),
                                     margin=0, giou_floor=0.0, detector="det2")
    assert table.loc[table["crop_id"] == "b.jpg#0", "label"].item() == "MO"
    assert table["name"].value_counts()["a.jpg"] == 1


def test_no_overrides_leave_boxes_and_flags_unchanged(results, tmp_path):
    paths = {k: str(tmp_path / f"{k}.parquet") for k in ("reviewed_boxes", "reviewed_flags")}
    review.apply_review(curated_boxes=str(results / "curation" / "boxes.parquet"),
                        noisy=str(results / "detection" / "noisy_flags.parquet"), overrides=[],
                        review_ledger=str(tmp_path / "ledger.csv"), **paths)
    before = tables.read_table(results / "curation" / "boxes.parquet", tables.CURATED_BOXES)
    pd.testing.assert_frame_equal(tables.read_table(paths["reviewed_boxes"], tables.CURATED_BOXES), before)
    assert tables.read_table(paths["reviewed_flags"], tables.NOISY_FLAGS)["excluded"].all()


def test_a_task_left_unchanged_keeps_the_image():
    boxes = pd.DataFrame({"row": [0], "name": ["a.jpg"], "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [50.0],
                          "label": ["PNN"], "class_idx": [0], "clipped": [False]})
    region = review._region("row0", np.array([10, 10, 50, 50]), "PNN", SIDE, SIDE)
    overrides = review.overrides_from_label_studio([{"data": {"name": "a.jpg"}, "annotations": [{"result": [region]}]},
                                                    {"data": {"name": "b.jpg"}, "annotations": []}], boxes)
    assert overrides[["name", "action"]].values.tolist() == [["a.jpg", "keep_image"]]
