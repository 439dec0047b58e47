"""Detection stage: YOLO export, training with exact resume after a kill, prediction, OOF fitting and
scoring, test-box fusion and the classifier crop table, on tiny generated smears.

The smear generator below is shared with tests/test_backgrounds.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from leukoflow.detection import crops, datasets, fitting
from leukoflow.detection import yolo as detection
from leukoflow.engine.devices import resolve_device

from leukoflow import tables
from leukoflow.constants import CLASSES

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- tiny smears

BACKGROUND_RGB = (236, 218, 222)
RED_CELL_RGB = (214, 150, 160)
WHITE_CELL_RGB = (150, 105, 180)
NUCLEUS_RGB = (85, 40, 120)


def draw_smear(rng: np.random.Generator, size: int, n_white: int) -> tuple[Image.Image, np.ndarray]:
    """One image and its white-cell boxes (xyxy px)."""
    noise = rng.integers(-6, 7, size=(size, size, 3))
    pixels = np.clip(np.array(BACKGROUND_RGB) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), size * rng.uniform(0.06, 0.09)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=RED_CELL_RGB)
    boxes = []
    for index in range(n_white):
        r = size * rng.uniform(0.14, 0.2)
        x = size * (0.3 + 0.4 * index) if n_white > 1 else rng.uniform(r + 2, size - r - 2)
        y = rng.uniform(r + 2, size - r - 2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=WHITE_CELL_RGB)
        draw.ellipse([x - r / 2, y - r / 2, x + r / 2, y + r / 2], fill=NUCLEUS_RGB)
        boxes.append([x - r, y - r, x + r, y + r])
    return image, np.round(np.array(boxes))


def make_smear_tables(root: Path, n_train: int = 24, n_test: int = 6, n_folds: int = 3, size: int = 96,
                      seed: int = 0) -> dict[str, pd.DataFrame]:
    """Write images under root/images and return CURATED_IMAGES, CURATED_BOXES, FOLDS, INGEST_TEST frames."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    image_rows, box_rows, test_rows = [], [], []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        name = f"{split}{index:03d}.jpg"
        n_white = 2 if index % 5 == 4 else 1
        image, boxes = draw_smear(rng, size, n_white)
        path = root / "images" / name
        image.save(path, quality=92)
        image_rows.append((name, split, str(path), size, size))
        for box in boxes:
            if split == "train":
                label = CLASSES[len(box_rows) % 3]
                box_rows.append((len(box_rows), name, *map(float, box), label, CLASSES.index(label), False))
            else:
                test_rows.append((len(test_rows), 1000 + len(test_rows), name, "ok", ""))
    return {
        "images": _images_frame(image_rows),
        "boxes": pd.DataFrame(box_rows, columns=tables.CURATED_BOXES.column_names),
        "folds": _folds_frame([row for row in image_rows if row[1] == "train"], box_rows, n_folds),
        "test": pd.DataFrame(test_rows, columns=tables.INGEST_TEST.column_names),
    }


def _images_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["name", "split", "path", "width", "height"])
    frame["pixel_mean"] = 200.0
    frame["pixel_std"] = 20.0
    frame["group_id"] = -1
    frame["role"] = "unique"
    frame["train_test_duplicate"] = False
    frame["keep"] = True
    return frame[tables.CURATED_IMAGES.column_names]


def _folds_frame(train_rows: list[tuple], box_rows: list[tuple], n_folds: int) -> pd.DataFrame:
    names = [row[0] for row in train_rows]
    counts = pd.Series([row[1] for row in box_rows]).value_counts()
    return pd.DataFrame({
        "name": names,
        "fold": [index % n_folds for index in range(len(names))],
        "group_id": -1,
        "n_boxes": [int(counts.get(name, 0)) for name in names],
        "multilabel": "0",
        "surface_bin": 0,
        "box_ratio_bin": 0,
        "mean_bin": 0,
        "std_bin": 0,
    })


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return make_smear_tables(tmp_path_factory.mktemp("smears"), n_train=16, n_test=4, n_folds=2, size=96)


TRAIN_ARGS = {"imgsz": 64, "epochs": 2, "batch": 4, "nbs": 4, "warmup_epochs": 1, "close_mosaic": 1,
              "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "cache": "ram", "val": False}


def train(dataset: Path, run_dir: Path, **overrides) -> dict:
    return detection.fit_detector(dataset_yaml=dataset / "dataset.yaml", run_dir=run_dir,
                                    weights_out=run_dir.parent / f"{run_dir.name}.pt",
                                    history_out=run_dir.parent / f"{run_dir.name}.csv", arch="yolo11n.yaml",
                                    train_args={**TRAIN_ARGS, **overrides}, seed=7, threads=1, device="cpu")


@pytest.fixture(scope="module")
def dataset(smears, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yolo") / "fold0"
    datasets.write_yolo_dataset(images=smears["images"], boxes=smears["boxes"], folds=smears["folds"], fold=0,
                                 out_dir=out)
    return out


# ----------------------------------------------------------------------------- export


def test_yolo_label_lines_are_normalised_centre_size():
    assert datasets.yolo_label_lines(np.array([[10, 20, 30, 60]]), 100, 200) == ["0 0.200000 0.200000 0.200000 0.200000"]
    assert datasets.yolo_label_lines(np.zeros((0, 4)), 10, 10) == []


def test_dataset_links_images_and_writes_labels(smears, dataset):
    train_images = sorted((dataset / "train" / "images").iterdir())
    val_images = sorted((dataset / "val" / "images").iterdir())
    assert len(train_images) + len(val_images) == 16 and len(val_images) == 8
    assert all(path.is_symlink() for path in train_images + val_images)  # never copies
    first = val_images[0]
    label = (dataset / "val" / "labels" / f"{first.stem}.txt").read_text().splitlines()
    assert len(label) == (smears["boxes"]["name"] == first.name).sum()
    assert "path:" in (dataset / "dataset.yaml").read_text()


def test_dataset_excludes_noisy_images_and_adds_backgrounds(smears, tmp_path):
    backgrounds = pd.DataFrame({"name": ["bg_background.jpg"], "path": [smears["images"]["path"].iloc[0]],
                                "fold": [1], "width": [96], "height": [96]})
    summary = datasets.write_yolo_dataset(images=smears["images"], boxes=smears["boxes"], folds=smears["folds"],
                                           fold=0, out_dir=tmp_path, exclude=["train000.jpg"],
                                           backgrounds=backgrounds)
    assert not (tmp_path / "val" / "images" / "train000.jpg").exists()
    assert (tmp_path / "train" / "labels" / "bg_background.txt").read_text() == ""
    assert summary["train_empty_images"] == 1 and summary["val_images"] == 7


def test_dataset_without_training_images_is_an_error(smears, tmp_path):
    with pytest.raises(ValueError, match="no training image"):
        datasets.write_yolo_dataset(images=smears["images"], boxes=smears["boxes"], folds=smears["folds"], fold=0,
                                     out_dir=tmp_path, exclude=smears["folds"]["name"][smears["folds"]["fold"] == 1])


# ----------------------------------------------------------------------------- training, resume, prediction


def test_a_checkpoint_without_its_exact_state_starts_over(tmp_path):
    """A kill between ultralytics' last.pt and the exact state: resuming would draw other batches."""
    fingerprint = {"arch": "yolo11n.yaml", "seed": 7}
    (tmp_path / "weights").mkdir()
    (tmp_path / detection.RUN_FINGERPRINT).write_text(json.dumps(fingerprint))
    torch.save({"epoch": 1}, tmp_path / "weights" / "last.pt")
    assert detection._run_state(tmp_path, fingerprint) == "fresh"  # no exact state at all
    torch.save({"epoch": 0}, tmp_path / detection.RESUME_STATE)
    assert detection._run_state(tmp_path, fingerprint) == "fresh"  # the state is an epoch behind
    torch.save({"epoch": 1}, tmp_path / detection.RESUME_STATE)
    assert detection._run_state(tmp_path, fingerprint) == "unfinished"
    assert detection._run_state(tmp_path, {**fingerprint, "seed": 8}) == "fresh"
    torch.save({"epoch": -1}, tmp_path / "weights" / "last.pt")
    assert detection._run_state(tmp_path, fingerprint) == "finished"


@pytest.mark.slow
def test_killed_training_resumes_from_its_epoch_with_identical_weights(dataset, tmp_path, smears):
    full = train(dataset, tmp_path / "full")
    assert full["run"] == "fresh" and full["epochs"] == 2
    # a real SIGKILL right after the first epoch's checkpoint, in a child process
    child = f"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from tests.test_detection import train
from leukoflow.detection import yolo as detection
save = detection.save_resume_state
def save_then_die(trainer, path):
    save(trainer, path)
    os.kill(os.getpid(), signal.SIGKILL)
detection.save_resume_state = save_then_die
train(Path({str(dataset)!r}), Path({str(tmp_path / "killed")!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    killed = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "killed" / "weights" / "last.pt").exists()
    resumed = train(dataset, tmp_path / "killed")
    assert resumed["run"] == "unfinished" and resumed["resumed_from_epoch"] == 1
    assert resumed["epochs"] == 2  # history has both epochs
    for key in ("model", "ema"):
        a = torch.load(tmp_path / "full" / detection.RESUME_STATE, weights_only=False)[key]
        b = torch.load(tmp_path / "killed" / detection.RESUME_STATE, weights_only=False)[key]
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{key}.{name}")
    # a finished run is reused, not retrained
    assert train(dataset, tmp_path / "full")["run"] == "finished"
    # and the trained model predicts boxes for every image it is given
    paths = detection.image_paths_of(smears["images"], ["train000.jpg", "test016.jpg"])
    predicted = detection.predict_images(tmp_path / "full.pt", paths, imgsz=64, conf=0.0001, iou=0.3, max_det=5,
                                         device="cpu")
    assert set(predicted["name"]) <= set(paths) and list(predicted.columns) == detection.DETECTION_COLUMNS


@pytest.mark.slow
def test_changed_settings_start_over(dataset, tmp_path):
    first = train(dataset, tmp_path / "run", epochs=1)
    again = train(dataset, tmp_path / "run", epochs=1, lr0=0.02)
    assert first["run"] == again["run"] == "fresh"
    assert json.loads((tmp_path / "run" / detection.RUN_FINGERPRINT).read_text())["train_args"]["lr0"] == 0.02


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- fitting and scoring


def raw(*rows):
    frame = pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score"])
    return detection.raw_detections(frame.astype({c: float for c in ["x1", "y1", "x2", "y2", "score"]}), "det1", 0)


def test_fit_oof_keeps_the_annotated_count(smears):
    boxes = smears["boxes"]
    two = boxes.groupby("name").size().idxmax()
    detections = raw((two, 1, 1, 20, 20, 0.9), (two, 30, 30, 60, 60, 0.8), (two, 0, 0, 5, 5, 0.1),
                     ("train000.jpg", 10.4, 10.6, 40.5, 41.5, 0.7))
    folds = smears["folds"][smears["folds"]["name"].isin([two, "train000.jpg", "train001.jpg"])]
    fitted = fitting.fit_oof_boxes(detections, boxes, smears["images"], folds, "det1")
    tables.validate(fitted, tables.OOF_BOXES)
    assert fitted.groupby("name").size().to_dict() == boxes[boxes["name"].isin(folds["name"])].groupby("name").size().to_dict()
    assert fitted.loc[fitted["name"] == "train000.jpg", ["x1", "y1", "x2", "y2"]].values.tolist() == [[10, 11, 40, 42]]
    assert fitted.loc[fitted["name"] == "train001.jpg", "padded"].all()  # no detection: full-image box


def test_evaluate_oof_perfect_boxes_beat_the_full_image_baseline(smears):
    boxes = smears["boxes"]
    fitted = boxes.assign(detector="det1", fold=0, rank=boxes.groupby("name").cumcount(), score=1.0, padded=False)
    summary = fitting.evaluate_oof(fitted[tables.OOF_BOXES.column_names], boxes, smears["images"])
    assert summary["oof_mean_rescaled_giou"] == pytest.approx(1.0)
    assert summary["full_image_baseline_giou"] < 0.8
    assert summary["cells"] == len(boxes)


def test_fuse_test_boxes_one_box_per_test_row(smears):
    test = smears["test"]
    two = test["name"].value_counts().idxmax()
    detections = pd.concat([raw((two, 10, 10, 40, 40, 0.9)).assign(fold=fold) for fold in range(2)]
                           + [raw((two, 12, 12, 42, 42, 0.5))], ignore_index=True)
    quarantined = pd.DataFrame([{"row": len(test), "trustii_id": 9999, "name": "missing.jpg", "status": "ok",
                                 "reason": ""}])
    fused = fitting.fuse_test_boxes(detections, pd.concat([test, quarantined], ignore_index=True),
                                      smears["images"], wbf_iou=0.25, wbf_skip=1e-4)
    tables.validate(fused, tables.TEST_BOXES)
    assert len(fused) == len(test) + 1 and fused["row"].tolist() == list(range(len(test) + 1))
    mine = fused[fused["name"] == two].sort_values("score", ascending=False)
    assert mine["source"].tolist()[0] == "detected"
    # three boxes fused into one: coordinates weighted by score, score the mean
    expected = np.round((0.9 * np.array([10, 40]) * 2 + 0.5 * np.array([12, 42])) / 2.3)
    assert mine.iloc[0][["x1", "x2"]].tolist() == expected.tolist()
    assert mine.iloc[0]["score"] == pytest.approx((0.9 + 0.9 + 0.5) / 3)
    assert (mine["source"] == "padded").sum() == len(mine) - 1
    assert fused.loc[fused["name"] == "missing.jpg", "source"].item() == "unreadable"


# ----------------------------------------------------------------------------- crops


def test_train_crops_take_the_best_giou_prediction_plus_margin(smears):
    boxes = smears["boxes"][smears["boxes"]["name"] == "train000.jpg"]
    x1, y1, x2, y2 = boxes[["x1", "y1", "x2", "y2"]].iloc[0]
    fitted = pd.DataFrame({"detector": "det2", "fold": 0, "name": "train000.jpg", "rank": [0],
                           "x1": [x1 + 2], "y1": [y1], "x2": [x2], "y2": [y2], "score": [0.8], "padded": [False]})
    table, giou = crops.train_crops(fitted, boxes, smears["images"], margin=16, giou_floor=0.0, detector="det2")
    tables.validate(table, tables.CROPS)
    assert table[["x1", "y1", "x2", "y2"]].values.tolist() == [[max(x1 + 2 - 16, 0), max(y1 - 16, 0),
                                                                min(x2 + 16, 96), min(y2 + 16, 96)]]
    assert table["label"].item() == boxes["label"].item() and table["crop_id"].item() == "train000.jpg#0"
    assert 0.8 < giou[0] < 1


def test_test_crops_skip_unreadable_rows(smears):
    test_boxes = pd.DataFrame({"row": [0, 1], "trustii_id": [5, 6], "name": ["test016.jpg", "gone.jpg"],
                               "x1": [0.0, 0.0], "y1": [10.0, 0.0], "x2": [90.0, 1.0], "y2": [50.0, 1.0],
                               "score": [0.9, 0.0], "source": ["detected", "unreadable"]})
    table = crops.test_crops(test_boxes, smears["images"], margin=16, detector="det1")
    assert table[["x1", "y1", "x2", "y2", "trustii_id"]].values.tolist() == [[0, 0, 96, 66, 5]]
    assert table["source"].item() == "det1_test"


def test_dataset_digest_follows_content(smears, tmp_path):
    common = {"images": smears["images"], "boxes": smears["boxes"], "folds": smears["folds"], "fold": 0}
    datasets.write_yolo_dataset(out_dir=tmp_path / "a", **common)
    datasets.write_yolo_dataset(out_dir=tmp_path / "b", **common)
    datasets.write_yolo_dataset(out_dir=tmp_path / "c", exclude=["train001.jpg"], **common)
    digests = [detection.dataset_digest(tmp_path / name / "dataset.yaml") for name in "abc"]
    assert digests[0] == digests[1] != digests[2]


def test_train_crops_match_one_to_one_and_fall_back_to_the_truth_below_the_floor(smears):
    two = smears["boxes"].groupby("name").size().idxmax()
    boxes = smears["boxes"][smears["boxes"]["name"] == two]
    truth = boxes[["x1", "y1", "x2", "y2"]].to_numpy(float)
    # the first prediction fits the first cell; the second lies far from both (a padding-like box)
    predicted = np.array([truth[0] + [1, 0, 1, 0], [0.0, 0.0, 8.0, 8.0]])
    fitted = pd.DataFrame({"detector": "det2", "fold": 0, "name": two, "rank": [0, 1], "x1": predicted[:, 0],
                           "y1": predicted[:, 1], "x2": predicted[:, 2], "y2": predicted[:, 3], "score": [0.9, 0.2],
                           "padded": [False, False]})
    table, giou = crops.train_crops(fitted, boxes, smears["images"], margin=0, giou_floor=0.0, detector="det2")
    # best-GIoU matching would give both cells the first box; one-to-one gives the second cell the bad box,
    # whose GIoU is below the floor, so its crop is its own ground-truth box
    assert table["source"].tolist() == ["det2_oof", "ground_truth"]
    assert table.iloc[1][["x1", "y1", "x2", "y2"]].tolist() == truth[1].tolist()
    assert giou[1] < 0 and table.iloc[1]["score"] == 1.0
    assert crops.summarise(table, table.iloc[:0], giou, 0)["crops_below_giou_floor"] == 1
    dropped, _ = crops.train_crops(fitted, boxes, smears["images"], margin=0, giou_floor=0.0, detector="det2",
                                   drop_rows=[int(boxes["row"].iloc[0])])
    assert dropped["crop_id"].tolist() == [f"{two}#1"]


def test_summarize_detection_carries_the_audit_figures(tmp_path):
    from leukoflow.detection import summarize_detection
    from leukoflow.engine.runtime import write_json

    def put(name, payload):
        write_json(tmp_path / "results" / f"{name}.json", payload)
        return str(tmp_path / "results" / f"{name}.json")

    detector = put("detection/det1/summary", {"oof_mean_rescaled_giou": 0.8, "full_image_baseline_giou": 0.5,
                                              "oof_gain_over_baseline": 0.3, "giou_histogram": [1],
                                              "per_fold": {"0": {"train_seconds": 3.0, "history": {}}}})
    summary = summarize_detection(
        detectors=[detector], exports=[put("detection/det1/export_summary", {"seconds": 1.0})],
        predictions=[put("detection/det1/fold0/oof_summary", {"seconds": 2.0})],
        noisy=put("detection/noisy_summary", {"noisy_precision": 0.9, "noisy_cap_bound": False, "seconds": 1.0}),
        labels=put("detection/label_summary", {"label_noise_recall": 0.6, "seconds": 1.0}),
        review=put("detection/review_summary", {"review_overrides": 0}),
        backgrounds=put("detection/backgrounds_summary", {"n_backgrounds": 3}),
        test=put("detection/test_summary", {"test_boxes": 4, "test_rows": 4, "ms_per_image_per_model": 9.0}),
        crops=put("crops/summary", {"n_crops": 7, "crops_below_giou_floor": 2, "crops_dropped_noisy_boxes": 1}),
        detector_names=["det1"], test_detector="det1")
    assert (summary["noisy_precision"], summary["noisy_cap_bound"], summary["label_noise_recall"]) == (0.9, False, 0.6)
    assert summary["crops_below_giou_floor"] == 2 and summary["timings_seconds"]["detection/noisy_summary"] == 1.0
