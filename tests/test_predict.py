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
from leukoflow.classification import crop_cache
from leukoflow.detection import crops
from leukoflow.detection import yolo as detection
from leukoflow.classification.items import main_items
from leukoflow.classification.model import BEST_FILE, build_model
from leukoflow.classification.scoring import logits_frame
from leukoflow.classification.spec import ClassifierSpec, TrainSettings, model_defaults, with_defaults
from leukoflow.classification.stage import predict_test
from leukoflow.detection.fitting import fuse_test_boxes
from leukoflow.ensemble.blending import Scheme, blend
from leukoflow.ensemble.inputs import align_inputs
from leukoflow.ensemble.weight_search import classes_frame
from leukoflow.inference import predict
from leukoflow.ensemble import submission
from leukoflow import tables
from leukoflow.constants import CLASSES

REPO = Path(__file__).resolve().parents[1]
PREDICT_ARGS = {"imgsz": 64, "conf": 0.001, "iou": 0.3, "max_det": 20, "batch": 8}
WBF = {"wbf_iou": 0.25, "wbf_skip": 0.0001}
MARGIN = 16
SETTINGS = TrainSettings(seed=42, device="cpu", threads=1, amp=False, deterministic=True,
                         channels_last=True, prefetch=False)
SPEC_DEFAULTS = model_defaults(REPO / "config" / "schema.yaml")


def _spec(**entry) -> ClassifierSpec:
    """A classifier spec completed with the schema defaults (training keys unused here)."""
    return ClassifierSpec.from_config(
        with_defaults({"epochs": 1, "batch_size": 4, "lr": 1e-3, **entry}, SPEC_DEFAULTS))
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
        model = build_model(spec)
        path = out_dir / name / f"fold{fold}" / BEST_FILE
        path.parent.mkdir(parents=True)
        torch.save({"spec": asdict(spec), "fold": fold, "model": model.state_dict(), "best_f1": 0.0,
                    "best_at": 1.0}, path)
        paths.append(path)
    return paths


def _workflow_test_predictions(smear: dict, root: Path, detectors: list[Path], classifiers: dict,
                               scheme: Scheme) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test boxes and submission exactly as the rules compute them."""
    images = smear["images"]
    test = smear["test"]
    test_images = images[images["split"] == "test"]
    paths = detection.image_paths_of(images, test_images["name"])
    raw = pd.concat([detection.raw_detections(detection.predict_images(w, paths, device="cpu", **PREDICT_ARGS),
                                              "det1", fold) for fold, w in enumerate(detectors)], ignore_index=True)
    test_boxes = fuse_test_boxes(raw, test, images, **WBF)
    crop_table = crops.test_crops(test_boxes, images, margin=MARGIN, detector="det1")
    path_of = dict(zip(images["name"], images["path"]))
    crop_index = crop_cache.build_crop_cache(crop_table, path_of, 32, root / "cache_crops.shard", threads=1,
                                             fmt="webp")
    rows = pd.DataFrame({"name": test_images["name"], "path": test_images["path"], "fold": -1, "role": "test"})
    image_index = crop_cache.build_image_cache(rows, 32, root / "cache_images.shard", threads=1, fmt="webp")
    frames = {}
    for name, (kind, checkpoints) in classifiers.items():
        spec = _spec(name=name, backbone="resnet10t", kind=kind, img_size=32)
        if kind == "multiclass":
            pixels, index = crop_cache.PixelCache(root / "cache_crops.shard", crop_index), crop_index
            truth = crop_table
        else:
            pixels, index = crop_cache.PixelCache(root / "cache_images.shard", image_index), image_index
            truth = pd.DataFrame({"name": test_images["name"], "labels": ""})
        items, _ = main_items(spec, index, truth)
        logits = predict_test(checkpoints, [pixels], items, settings=SETTINGS)
        frames[name] = (kind, logits_frame(items, logits, np.full(len(items), -1)))
    inputs = align_inputs({n: f for n, (k, f) in frames.items() if k == "multiclass"},
                          {n: f for n, (k, f) in frames.items() if k == "multilabel"})
    classes = classes_frame(inputs, blend(inputs, scheme))
    frame, _ = submission.assemble(test, test_boxes, classes, fallback_class="PNN")
    return test_boxes, frame.merge(classes[["trustii_id", "probability"]], on="trustii_id", how="left")


def export_world_bundle(root: Path, bundle_dir: Path, detectors: list[Path], classifiers: dict, smear: dict) -> dict:
    """The rule entry `export_bundle` called directly, with small stand-ins for the run's tables."""
    oof = pd.DataFrame({"id": ["a#0", "b#0", "c#0", "d#0"], "name": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1],
                        "trustii_id": -1, "truth": [0, 1, 1, 2], "class_idx": [0, 1, 2, 2], "label": "PNN",
                        "probability": 0.5, "single_cell": True, "blended": False})
    tables.write_table(oof.astype({"id": "str", "name": "str", "label": "str"}), root / "oof_classes.parquet",
                       tables.ENSEMBLE_CLASSES)
    tables.write_table(smear["images"], root / "curated_images.parquet", tables.CURATED_IMAGES)
    tables.write_table(tables.empty_frame(tables.CURATED_BOXES), root / "curated_boxes.parquet", tables.CURATED_BOXES)
    return bundle_lib.export_bundle(
        bundle=bundle_dir, detector_weights=detectors,
        classifier_checkpoints=[p for name in ("mc", "ml") for p in classifiers[name][1]],
        ensemble_weights=root / "weights.json", oof_raw=[], oof_classes=root / "oof_classes.parquet",
        images=root / "curated_images.parquet", boxes=root / "curated_boxes.parquet", detector_name="det1",
        detector_predict=PREDICT_ARGS, **WBF, margin=MARGIN, classifier_models=["mc", "ml"],
        classifier_settings={"amp": SETTINGS.amp, "channels_last": SETTINGS.channels_last},
        predict_settings={"min_score": 0.5, "nms_iou": 0.5, "device": "cpu", "threads": 1}, dataset="test smears")


@pytest.fixture(scope="module")
def world(module_dir) -> dict:
    root = module_dir
    smear = make_test_images(root)
    detectors = _detector_weights(root)
    classifiers = {"mc": ("multiclass", _classifier_checkpoints(root, "mc", "multiclass")),
                   "ml": ("multilabel", _classifier_checkpoints(root, "ml", "multilabel"))}
    scheme = Scheme({"mc": 1.0}, 0.4)
    test_boxes, expected = _workflow_test_predictions(smear, root, detectors, classifiers, scheme)
    weights = root / "weights.json"
    weights.write_text(json.dumps({"scheme": "best", **scheme.as_dict(), "multiclass": ["mc"], "multilabel": ["ml"],
                                   "fallback_class": "PNN"}))
    bundle_dir = root / "bundle"
    export_world_bundle(root, bundle_dir, detectors, classifiers, smear)
    test_csv = root / "test.csv"
    smear["test"].rename(columns={"name": "NAME"})[["trustii_id", "NAME"]].to_csv(test_csv, index=False)
    return {"root": root, "smear": smear, "bundle": bundle_dir, "test_csv": test_csv, "expected": expected,
            "test_boxes": test_boxes}


def test_bundle_lists_every_file_in_its_manifest_and_refuses_a_changed_one(world, tmp_path):
    loaded = bundle_lib.load_bundle(world["bundle"])
    assert len(loaded.spec["detector"]["folds"]) == N_FOLDS and set(loaded.classifiers) == {"mc", "ml"}
    # detector folds + its YAML + classifier folds + bundle.json + MODEL_CARD.md
    assert bundle_lib.verify_manifest(world["bundle"]) == N_FOLDS + 1 + 2 * N_FOLDS + 2
    assert {"python", "torch", "ultralytics", "timm", "leukoflow", "safetensors"} <= set(loaded.spec["versions"])
    weight_files = [p for p in world["bundle"].rglob("*") if p.is_file() and p.suffix not in (".json", ".md", ".sha256")]
    assert {p.suffix for p in weight_files} == {".safetensors", ".yaml"}  # no pickle travels in a bundle
    copy = tmp_path / "bundle"
    shutil.copytree(world["bundle"], copy)
    with open(copy / "classifiers" / "ml" / "fold1.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(bundle_lib.BundleError, match="classifiers/ml/fold1.safetensors"):
        bundle_lib.load_bundle(copy)


class _Payload:
    """Unpickling this runs `touch <marker>`: the crafted checkpoint of a hostile bundle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_copy(world, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "hostile"
    shutil.copytree(world["bundle"], copy)
    return copy, tmp_path / "PWNED"


def test_a_crafted_pickle_in_place_of_weights_never_runs(world, tmp_path):
    copy, marker = _hostile_copy(world, tmp_path)
    torch.save({"model": _Payload(marker)}, copy / "classifiers" / "mc" / "fold0.safetensors")
    bundle_lib.write_manifest(copy)  # the manifest proves integrity, not origin
    with pytest.raises(bundle_lib.BundleError, match="pickle.*not loaded|not loaded.*pickle"):
        predict.Predictor(copy, profile="fast")
    assert not marker.exists()


def test_a_bundle_naming_a_pickled_checkpoint_is_refused_before_loading(world, tmp_path):
    copy, marker = _hostile_copy(world, tmp_path)
    torch.save({"model": _Payload(marker)}, copy / "detector" / "fold0.pt")
    spec = json.loads((copy / "bundle.json").read_text())
    spec["detector"]["folds"][0] = "detector/fold0.pt"
    (copy / "bundle.json").write_text(json.dumps(spec))
    bundle_lib.write_manifest(copy)
    with pytest.raises(bundle_lib.BundleError, match=r"detector/fold0.pt; only .safetensors files are loaded"):
        bundle_lib.load_bundle(copy)
    spec["format_version"] = 1  # an old-format bundle (pickled .pt files) is refused as such
    (copy / "bundle.json").write_text(json.dumps(spec))
    bundle_lib.write_manifest(copy)
    with pytest.raises(bundle_lib.BundleError, match="pickled checkpoints"):
        bundle_lib.load_bundle(copy)
    assert not marker.exists()


def test_the_manifest_digest_identifies_the_bundle(world, tmp_path):
    digest = bundle_lib.load_bundle(world["bundle"]).manifest_sha256
    assert bundle_lib.load_bundle(world["bundle"], expected_sha256=digest.upper()).manifest_sha256 == digest
    with pytest.raises(bundle_lib.BundleError, match="not the published bundle"):
        bundle_lib.load_bundle(world["bundle"], expected_sha256="0" * 64)


@pytest.mark.slow
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
    predicted = predict.outputs.read_rows(out)
    names = {Path(p).name for p in chosen}
    expected = world["expected"][world["expected"]["NAME"].isin(names)]
    assert summary["cells"] == len(expected) == 4 and summary["annotated_images"] == 3
    merged = expected.merge(predicted, on="trustii_id", suffixes=("_workflow", "_predict"))
    assert len(merged) == len(expected)
    for column in ("x1", "y1", "x2", "y2", "class"):
        assert merged[f"{column}_workflow"].tolist() == merged[f"{column}_predict"].tolist(), column
    assert np.allclose(merged["probability_workflow"], merged["probability_predict"], atol=1e-5)
    assert (world["test_boxes"]["source"] == "detected").any()  # the comparison covers fused boxes, not only padding
    probabilities = predicted[predict.outputs.PROBABILITY_COLUMNS].to_numpy()
    assert np.array_equal(np.array(CLASSES)[probabilities.argmax(1)], predicted["class"].to_numpy(str))
    assert np.allclose(probabilities.max(1), predicted["probability"])
    assert list(predicted.columns[:7]) == ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]
    assert not (tmp_path / "predictions.csv.progress").exists()


def test_coco_output_loads_in_pycocotools_and_matches_the_csv(world, tmp_path):
    from pycocotools.coco import COCO

    folder = Path(world["smear"]["images"]["path"].iloc[0]).parent
    out = tmp_path / "p.csv"
    summary = predict.run([folder], bundle=world["bundle"], out=out, profile="fast", min_score=0.01)
    coco = COCO(str(tmp_path / "p.coco.json"))
    rows = predict.outputs.read_rows(out)
    assert len(coco.getImgIds()) == summary["images"] == 4
    assert len(coco.getAnnIds()) == len(rows) == summary["coco_annotations"] > 0
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    row = rows[rows["NAME"] == coco.loadImgs([1])[0]["file_name"]].iloc[0]
    assert first["bbox"] == [row.x1, row.y1, row.x2 - row.x1, row.y2 - row.y1]
    assert coco.loadCats([first["category_id"]])[0]["name"] == row["class"]
    results = coco.loadRes([{**a, "score": a["score"]} for a in coco.loadAnns(coco.getAnnIds())])
    assert len(results.getAnnIds()) == len(rows)


def test_ids_are_relative_paths_so_same_named_files_in_subfolders_stay_apart(world, tmp_path):
    sources = world["smear"]["images"]["path"].tolist()
    tree = tmp_path / "smears"
    for patient, source in (("p1", sources[0]), ("p2", sources[3]), ("p2/deeper", sources[1])):
        (tree / patient).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tree / patient / "0001.jpg")
    (tree / "p2" / "0002.jpg").write_bytes(b"")  # a zero-byte file among them
    paths = predict.image_inputs.collect_images([tree])
    assert list(paths) == ["p1/0001.jpg", "p2/0001.jpg", "p2/0002.jpg", "p2/deeper/0001.jpg"]
    assert list(predict.image_inputs.collect_images([str(tree / "*" / "0001.jpg")])) == ["p1/0001.jpg", "p2/0001.jpg"]
    with pytest.raises(ValueError, match="same id|the id"):
        predict.image_inputs.collect_images([tree / "p1", tree / "p2"])
    out = tmp_path / "p.csv"
    summary = predict.run([tree], bundle=world["bundle"], out=out, profile="fast", min_score=0.01, chunk_size=1)
    rows = predict.outputs.read_rows(out)
    assert summary["unreadable_images"] == 1
    assert rows.loc[rows["NAME"] == "p2/0002.jpg", "source"].tolist() == ["unreadable"]
    alone = {}
    for name, source in (("p1/0001.jpg", sources[0]), ("p2/0001.jpg", sources[3])):
        single = tmp_path / f"single_{name.replace('/', '_')}.csv"
        predict.run([source], bundle=world["bundle"], out=single, profile="fast", min_score=0.01)
        alone[name] = predict.outputs.read_rows(single)[["x1", "y1", "x2", "y2", "class"]].values.tolist()
        assert rows.loc[rows["NAME"] == name, ["x1", "y1", "x2", "y2", "class"]].values.tolist() == alone[name]
    assert alone["p1/0001.jpg"] != alone["p2/0001.jpg"]


def test_a_zero_byte_file_is_an_unreadable_image(tmp_path):
    empty, junk = tmp_path / "empty.jpg", tmp_path / "junk.png"
    empty.write_bytes(b"")
    junk.write_bytes(b"not an image at all")
    images = predict.image_inputs.prepare_images({"empty.jpg": str(empty), "junk.png": str(junk)}, tmp_path)
    assert not images["keep"].any()
    assert images["reason"].str.startswith("unreadable image: ").all()
    assert "0 bytes" in images["reason"].iloc[0] and "pi_heif" not in " ".join(images["reason"])


def test_a_16_bit_image_is_scaled_not_destroyed(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    source = tmp_path / "deep.png"
    Image.fromarray(ramp).save(source)
    images = predict.image_inputs.prepare_images({"scans/deep.png": str(source)}, tmp_path / "work")
    assert images["keep"].all() and images["reason"].iloc[0].startswith("repaired: ")
    copy = np.asarray(Image.open(images["path"].iloc[0]))
    assert copy.shape == (48, 64, 3) and copy.std() > 50  # a ramp, not a flat 255


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(world, tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(20):  # three chunks of 8 (the detector batch)
        shutil.copyfile(world["smear"]["images"]["path"].iloc[copy % 4], folder / f"{copy:02d}.jpg")
    arguments = {"bundle": world["bundle"], "profile": "fast", "min_score": 0.01, "chunk_size": 8}
    whole = tmp_path / "whole.csv"
    predict.run([folder], out=whole, **arguments)
    out = tmp_path / "cut.csv"
    real_record = predict._record
    calls = {"n": 0}

    def cut_after_rows(path, record):  # chunk 2's rows reach the CSV, its record never does
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_record(path, record)

    monkeypatch.setattr(predict, "_record", cut_after_rows)
    with pytest.raises(KeyboardInterrupt):
        predict.run([folder], out=out, **arguments)
    monkeypatch.setattr(predict, "_record", real_record)
    with pytest.raises(ValueError, match="other settings"):
        predict.run([folder], out=out, **{**arguments, "min_score": 0.2})
    summary = predict.run([folder], out=out, **arguments)
    assert summary["resumed_images"] == 8
    pd.testing.assert_frame_equal(predict.outputs.read_rows(out), predict.outputs.read_rows(whole))
    assert (tmp_path / "cut.coco.json").read_text() == (tmp_path / "whole.coco.json").read_text()


@pytest.mark.parametrize("flag, value", [("min_score", float("nan")), ("nms_iou", -3.0), ("min_score", 1.5),
                                         ("nms_iou", float("inf")), ("threads", 0), ("chunk_size", 0)])
def test_numeric_flags_out_of_range_are_refused_naming_the_flag(world, tmp_path, flag, value):
    arguments = {"bundle": world["bundle"], "out": tmp_path / "p.csv", flag: value}
    with pytest.raises(ValueError, match="--" + flag.replace("_", "-")):
        predict.run([world["smear"]["images"]["path"].iloc[0]], **arguments)


def test_about_prints_the_model_card_with_per_class_f1(world):
    text = predict.about(world["bundle"])
    assert text.startswith("# Model card") and "## Intended use" in text and "## Limits" in text
    assert "| PNN | neutrophil | 0 | 1.0000 |" in text and "| MO | monocyte | 0 | 0.6667 |" in text
    assert "| SS | Sézary cell | 0 | - |" in text
    assert bundle_lib.load_bundle(world["bundle"]).manifest_sha256 in text


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


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.run([sys.executable, "-m", "leukoflow.cli", "predict", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow  # a subprocess or a real store: kept out of the unit tier (make test-fast)
def test_cli_about_and_bad_numbers(world, tmp_path):
    about = _cli("--bundle", str(world["bundle"]), "--about")
    assert about.returncode == 0 and about.stdout.startswith("# Model card") and "MANIFEST.sha256 SHA-256" in about.stdout
    image = world["smear"]["images"]["path"].iloc[0]
    for flag, value in (("--min-score", "nan"), ("--nms-iou", "-3")):
        done = _cli(image, "--bundle", str(world["bundle"]), "--out", str(tmp_path / "p.csv"), flag, value)
        assert done.returncode == 2 and flag in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "p.csv").exists()


_PEAK_RSS = """
import json, resource, sys
from leukoflow.inference import predict
summary = predict.run([sys.argv[1]], bundle=sys.argv[2], out=sys.argv[3], profile="fast", min_score=0.01,
                      chunk_size=64, progress=False)
print(json.dumps({**summary, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.e2e
def test_peak_memory_stays_flat_from_200_to_2000_images(world, tmp_path):
    """Streaming in chunks: ten times the images, same peak RSS (within 40 MiB), every image in the CSV."""
    sources = world["smear"]["images"]["path"].tolist()
    peaks = {}
    for count in (200, 2000):
        folder = tmp_path / f"images{count}"
        folder.mkdir()
        for k in range(count):
            shutil.copyfile(sources[k % len(sources)], folder / f"{k:05d}.jpg")
        out = tmp_path / f"p{count}.csv"
        env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(folder), str(world["bundle"]), str(out)],
                              capture_output=True, text=True, env=env, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["images"] == count
        assert predict.outputs.read_rows(out)["NAME"].nunique() == count  # each smear here has a cell found
        peaks[count] = summary["peak_kib"] / 1024
    assert peaks[2000] - peaks[200] < 40, peaks


@pytest.mark.e2e
def test_the_bundle_served_by_mlflow_answers_a_prediction_request(world, tmp_path):
    import socket
    import time
    import urllib.request

    from leukoflow.inference import serving

    model = serving.save_model(world["bundle"], tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # mlflow starts `uvicorn` from PATH: the venv's bin folder first, as an activated venv has it
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(REPO / "workflow"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"), start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]  # the server died
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(2)
        image = world["smear"]["images"]["path"].iloc[3]
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[image]]},
                           "params": {"profile": "fast"}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=300).read())
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    rows = pd.DataFrame(answer["predictions"])
    direct = predict.Predictor(world["bundle"], profile="fast").predict({Path(image).name: image})
    assert rows["NAME"].tolist() == direct["NAME"].tolist() and len(rows) > 0
    assert rows["class"].tolist() == direct["class"].tolist()
    assert rows[["x1", "y1", "x2", "y2"]].values.tolist() == direct[["x1", "y1", "x2", "y2"]].values.tolist()
