"""Model bundle and `leukoflow predict` against the workflow's own test-prediction chain.

Tiny models built from scratch (never downloaded): YOLO from 'yolo11n.yaml' at 64 px whose class
bias is raised so that it detects something, and timm resnet10t classifiers at 32 px. The
"workflow" predictions come from the stage functions the rules call (detection, crops, crop
cache, classification, ensemble, submission); `leukoflow predict` must reproduce them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from leukoflow.inference import bundle as bundle_lib
from leukoflow.classification import training as classification
from leukoflow.classification import crop_cache
from leukoflow.detection import crops
from leukoflow.detection import yolo as detection
from leukoflow.ensemble import search as ensemble
from leukoflow.inference import predict
from leukoflow.ensemble import submission
from leukoflow import tables

REPO = Path(__file__).resolve().parents[1]
PREDICT_ARGS = {"imgsz": 64, "conf": 0.001, "iou": 0.3, "max_det": 20, "batch": 8}
WBF = {"wbf_iou": 0.25, "wbf_skip": 0.0001}
MARGIN = 16
SETTINGS = classification.TrainSettings(seed=42, device="cpu", threads=1, amp=False, deterministic=True,
                                        channels_last=True, prefetch=False)
SPEC_DEFAULTS = classification.model_defaults(REPO / "config" / "schema.yaml")


def _spec(**entry) -> classification.ClassifierSpec:
    """A classifier spec completed with the schema defaults (training keys unused here)."""
    return classification.ClassifierSpec.from_config(
        classification.with_defaults({"epochs": 1, "batch_size": 4, "lr": 1e-3, **entry}, SPEC_DEFAULTS))
N_FOLDS = 2


def make_test_images(root: Path, cells: tuple[int, ...] = (1, 1, 1, 2), size: int = 96,
                     seed: int = 3) -> dict[str, pd.DataFrame]:
    """Test smears (pale background, dark-purple cells) as CURATED_IMAGES and INGEST_TEST frames."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    image_rows, test_rows = [], []
    for index, n_cells in enumerate(cells):
        name = f"test{index:03d}.jpg"
        noise = rng.integers(-6, 7, size=(size, size, 3))
        image = Image.fromarray(np.clip(np.array([236, 218, 222]) + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for cell in range(n_cells):
            x, y, r = 25 + 45 * cell, rng.uniform(25, size - 25), 15
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(150, 105, 180))
            draw.ellipse([x - r / 2, y - r / 2, x + r / 2, y + r / 2], fill=(85, 40, 120))
            test_rows.append((len(test_rows), 1000 + len(test_rows), name, "ok", ""))
        path = root / "images" / name
        image.save(path, quality=92)
        image_rows.append({"name": name, "split": "test", "path": str(path), "width": size, "height": size,
                           "pixel_mean": 200.0, "pixel_std": 20.0, "group_id": -1, "role": "unique",
                           "train_test_duplicate": False, "keep": True})
    images = tables.validate(pd.DataFrame(image_rows).astype({"name": "str", "split": "str", "path": "str",
                                                              "role": "str"}), tables.CURATED_IMAGES)
    test = pd.DataFrame(test_rows, columns=tables.INGEST_TEST.column_names).astype(
        {"name": "str", "status": "str", "reason": "str"})
    return {"images": images, "test": tables.validate(test, tables.INGEST_TEST)}


def _detector_weights(out_dir: Path) -> list[Path]:
    YOLO = detection.import_yolo()
    paths = []
    for fold in range(N_FOLDS):
        torch.manual_seed(fold)
        model = YOLO("yolo11n.yaml")
        head = model.model.model[-1]
        for branch in head.cv3:  # class logits: confident everywhere, so NMS and WBF have work to do
            torch.nn.init.constant_(branch[-1].bias, 2.0)
        path = out_dir / f"det_fold{fold}.pt"
        model.save(str(path))
        paths.append(path)
    return paths


def _classifier_checkpoints(out_dir: Path, name: str, kind: str) -> list[Path]:
    spec = _spec(name=name, backbone="resnet10t", kind=kind, img_size=32, batch_size=4,
                                         tta="hflip" if kind == "multiclass" else "none",
                                         loss="cross_entropy" if kind == "multiclass" else "focal_bce")
    paths = []
    for fold in range(N_FOLDS):
        torch.manual_seed(100 + fold)
        model = classification.build_model(spec)
        path = out_dir / name / f"fold{fold}" / classification.BEST_FILE
        path.parent.mkdir(parents=True)
        torch.save({"spec": asdict(spec), "fold": fold, "model": model.state_dict(), "best_f1": 0.0,
                    "best_at": 1.0}, path)
        paths.append(path)
    return paths


def _workflow_test_predictions(smear: dict, root: Path, detectors: list[Path], classifiers: dict,
                               scheme: ensemble.Scheme) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test boxes and submission exactly as the rules compute them."""
    images = smear["images"]
    test = smear["test"]
    test_images = images[images["split"] == "test"]
    paths = detection.image_paths_of(images, test_images["name"])
    raw = pd.concat([detection.raw_detections(detection.predict_images(w, paths, device="cpu", **PREDICT_ARGS),
                                              "det1", fold) for fold, w in enumerate(detectors)], ignore_index=True)
    test_boxes = detection.fuse_test_boxes(raw, test, images, **WBF)
    crop_table = crops.test_crops(test_boxes, images, margin=MARGIN, detector="det1")
    path_of = dict(zip(images["name"], images["path"]))
    crop_index = crop_cache.build_crop_cache(crop_table, path_of, 32, root / "cache_crops.npy", threads=1)
    rows = pd.DataFrame({"name": test_images["name"], "path": test_images["path"], "fold": -1, "role": "test"})
    image_index = crop_cache.build_image_cache(rows, 32, root / "cache_images.npy", threads=1)
    frames = {}
    for name, (kind, checkpoints) in classifiers.items():
        spec = _spec(name=name, backbone="resnet10t", kind=kind, img_size=32)
        if kind == "multiclass":
            pixels, index, truth = np.load(root / "cache_crops.npy"), crop_index, crop_table
        else:
            pixels, index = np.load(root / "cache_images.npy"), image_index
            truth = pd.DataFrame({"name": test_images["name"], "labels": ""})
        items, _ = classification.main_items(spec, index, truth)
        logits = classification.predict_test(checkpoints, [pixels], items, settings=SETTINGS)
        frames[name] = (kind, classification.logits_frame(items, logits, np.full(len(items), -1)))
    inputs = ensemble.align_inputs({n: f for n, (k, f) in frames.items() if k == "multiclass"},
                                   {n: f for n, (k, f) in frames.items() if k == "multilabel"})
    classes = ensemble.classes_frame(inputs, ensemble.blend(inputs, scheme))
    frame, _ = submission.assemble(test, test_boxes, classes, fallback_class="PNN")
    return test_boxes, frame.merge(classes[["trustii_id", "probability"]], on="trustii_id", how="left")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    smear = make_test_images(root)
    detectors = _detector_weights(root)
    classifiers = {"mc": ("multiclass", _classifier_checkpoints(root, "mc", "multiclass")),
                   "ml": ("multilabel", _classifier_checkpoints(root, "ml", "multilabel"))}
    scheme = ensemble.Scheme({"mc": 1.0}, 0.4)
    test_boxes, expected = _workflow_test_predictions(smear, root, detectors, classifiers, scheme)
    weights = root / "weights.json"
    weights.write_text(json.dumps({"scheme": "best", **scheme.as_dict(), "multiclass": ["mc"], "multilabel": ["ml"],
                                   "fallback_class": "PNN"}))
    bundle_dir = root / "bundle"
    bundle_lib.export_bundle(
        out_dir=bundle_dir, detector_name="det1", detector_weights=detectors, detector_predict=PREDICT_ARGS, **WBF,
        margin=MARGIN, classifiers={n: c for n, (_, c) in classifiers.items()},
        classifier_settings={"amp": SETTINGS.amp, "channels_last": SETTINGS.channels_last},
        ensemble_weights=weights, predict_settings={"min_score": 0.5, "nms_iou": 0.5, "device": "cpu", "threads": 1})
    test_csv = root / "test.csv"
    smear["test"].rename(columns={"name": "NAME"})[["trustii_id", "NAME"]].to_csv(test_csv, index=False)
    return {"root": root, "smear": smear, "bundle": bundle_dir, "test_csv": test_csv, "expected": expected,
            "test_boxes": test_boxes}


def test_bundle_lists_every_file_in_its_manifest_and_refuses_a_changed_one(world, tmp_path):
    loaded = bundle_lib.load_bundle(world["bundle"])
    assert len(loaded.spec["detector"]["folds"]) == N_FOLDS and set(loaded.classifiers) == {"mc", "ml"}
    assert bundle_lib.verify_manifest(world["bundle"]) == N_FOLDS + 2 * N_FOLDS + 1  # + bundle.json
    assert {"python", "torch", "ultralytics", "timm", "leukoflow"} <= set(loaded.spec["versions"])
    copy = tmp_path / "bundle"
    shutil.copytree(world["bundle"], copy)
    with open(copy / "classifiers" / "ml" / "fold1.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(bundle_lib.BundleError, match="classifiers/ml/fold1.pt"):
        bundle_lib.load_bundle(copy)


def test_predict_in_a_fresh_process_reproduces_the_workflow(world, tmp_path):
    test_images = world["smear"]["images"].query("split == 'test'")
    chosen = test_images["path"].tolist()[1:]  # 3 of the 4 test images, one with two cells
    out = tmp_path / "predictions.csv"
    command = [sys.executable, "-m", "leukoflow.cli", "predict", *chosen, "--bundle", str(world["bundle"]),
               "--expected-counts", str(world["test_csv"]), "--out", str(out), "--annotate", str(tmp_path / "png")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    predicted = tables.read_table(out, tables.PREDICTIONS)
    names = {Path(p).name for p in chosen}
    expected = world["expected"][world["expected"]["NAME"].isin(names)]
    assert summary["cells"] == len(expected) == 4 and summary["annotated_images"] == 3
    merged = expected.merge(predicted, on="trustii_id", suffixes=("_workflow", "_predict"))
    assert len(merged) == len(expected)
    for column in ("x1", "y1", "x2", "y2", "class"):
        assert merged[f"{column}_workflow"].tolist() == merged[f"{column}_predict"].tolist(), column
    assert np.allclose(merged["probability_workflow"], merged["probability_predict"], atol=1e-5)
    assert (world["test_boxes"]["source"] == "detected").any()  # the comparison covers fused boxes, not only padding


def test_predict_without_counts_finds_the_cells(world, monkeypatch):
    """Threshold mode on controlled detections: two folds find each true cell (jittered) plus weak clutter."""
    smear = world["smear"]
    truth = smear["images"].query("split == 'test'")
    rng = np.random.default_rng(0)
    cells = {name: len(rows) for name, rows in smear["test"].groupby("name")}

    def fake_detect(self, paths):
        rows = []
        for name in paths:
            centre = np.array([30.0, 30.0, 60.0, 60.0])
            for cell in range(cells[name]):
                box = centre + 30 * cell
                for fold in range(N_FOLDS):
                    rows.append((name, *(box + rng.normal(0, 1.5, 4)), 0.9 - 0.05 * fold, fold))
            for _ in range(5):
                corner = rng.uniform(0, 70, 2)
                rows.append((name, *corner, *(corner + 20), rng.uniform(0.001, 0.2), 0))
        return pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score", "fold"])

    monkeypatch.setattr(predict.Predictor, "detect", fake_detect)
    predictor = predict.Predictor(world["bundle"], profile="fast")
    assert len(predictor.detectors) == 1 and list(predictor.classifiers) == ["mc"]
    paths = dict(zip(truth["name"], truth["path"]))
    found = predictor.predict(paths)
    assert found.groupby("NAME").size().to_dict() == cells
    assert (found["trustii_id"] == -1).all() and found["class"].ne("").all()
    assert len(predictor.predict(paths, min_score=0.95)) == 0


def test_min_score_calibration_picks_the_threshold_that_counts_right():
    """Cells scored 0.6-0.9 by one or two folds, clutter below 0.2: 0.25 separates them, 0.05 and 0.7 do not."""
    rng = np.random.default_rng(1)
    rows, counts = [], {}
    for image in range(12):
        name = f"img{image}.jpg"
        counts[name] = 1 + image % 2
        for cell in range(counts[name]):
            box = np.array([10.0, 10.0, 40.0, 40.0]) + 45 * cell
            rows += [(name, *(box + rng.normal(0, 1, 4)), rng.uniform(0.6, 0.9)) for _ in range(2)]
        for _ in range(4):
            corner = rng.uniform(0, 60, 2)
            rows.append((name, *corner, *(corner + 15), rng.uniform(0.01, 0.2)))
    raw = pd.DataFrame(rows, columns=["name", "x1", "y1", "x2", "y2", "score"])
    sizes = pd.DataFrame({"name": list(counts), "width": 100, "height": 100})
    found = predict.calibrate_min_score(raw, sizes, pd.Series(counts), candidates=[0.05, 0.25, 0.7], nms_iou=0.5,
                                        wbf_iou=0.25, wbf_skip=0.0001)
    assert found["min_score"] == 0.25 and found["exact_count_share"][0.25] == 1.0
    assert found["exact_count_share"][0.05] < 1.0 and found["exact_count_share"][0.7] < 1.0
