"""`leukoflow predict`: detection + classification of new images with a model bundle (METHOD.md §10).

The steps are the workflow's, run in memory on the given images:

1. every detector fold predicts every image (ultralytics, class-agnostic NMS, the bundle's
   arguments); the folds' boxes are fused per image by WBF;
2. with expected counts (a test.csv: trustii_id, NAME) each image keeps its top-N fused boxes,
   padded with the full-image box, exactly as the workflow's test boxes (`detection.fuse_test_boxes`);
   without, only boxes scoring at least `min_score` are fused, then class-agnostic NMS at `nms_iou`;
3. each box grown by the crop margin is cut and squash-resized per classifier input size, whole
   images for the multilabel models; each model averages its fold models (with its TTA);
4. the classes come from `ensemble.blend` with the bundle's weights (single-cell images blended).

Profiles: `full` uses everything in the bundle; `fast` one detector fold and the multiclass model
of highest ensemble weight (its first fold), no multilabel model.

Boxes come out identical to the workflow's for the same image when the detector sees the image in
a batch of the same composition (ultralytics letterboxes a batch of equal-sized images to the
minimal rectangle, a mixed batch to the full square): images are passed in the given order in
batches of the bundle's `batch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from leukoflow import boxes as boxes_lib
from leukoflow.classification import training as classification
from leukoflow.classification import crop_cache
from leukoflow.detection import yolo as detection
from leukoflow.ensemble import search as ensemble
from leukoflow import tables
from leukoflow.inference.bundle import Bundle, load_bundle

LOGGER = logging.getLogger(__name__)
PROFILES = ("full", "fast")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
XYXY = ["x1", "y1", "x2", "y2"]


# ----------------------------------------------------------------------------- inputs

def collect_images(inputs: Sequence[str | Path]) -> dict[str, str]:
    """NAME -> path for image files and the image files of folders (sorted, not recursive), in order.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
        ValueError: two inputs share a file name (NAME must identify an image).
    """
    found: dict[str, str] = {}
    for entry in map(Path, inputs):
        if entry.is_dir():
            files = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"predict: folder {entry} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        elif entry.is_file():
            files = [entry]
        else:
            raise FileNotFoundError(f"predict: {entry} does not exist")
        for path in files:
            if path.name in found and found[path.name] != str(path):
                raise ValueError(f"predict: two images are named {path.name!r} ({found[path.name]}, {path})")
            found[path.name] = str(path)
    return found


def read_expected_counts(path: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """INGEST_TEST-like rows (row, trustii_id, name) of the given images, in test.csv order.

    Raises:
        ValueError: the CSV lacks trustii_id/NAME, or an image has no row in it.
    """
    from leukoflow.metric import read_csv_table

    frame = read_csv_table(path, role="expected counts")
    missing = [c for c in ("trustii_id", "NAME") if c not in frame.columns]
    if missing:
        raise ValueError(f"predict: expected counts {path} lacks column(s) {missing}")
    absent = [name for name in names if name not in set(frame["NAME"].astype(str))]
    if absent:
        raise ValueError(f"predict: {len(absent)} image(s) have no row in {path}, e.g. {absent[0]!r}")
    frame = frame.reset_index(drop=True)
    rows = pd.DataFrame({"row": np.arange(len(frame), dtype="int64"),
                         "trustii_id": frame["trustii_id"].astype("int64"),
                         "name": frame["NAME"].astype(str).astype("str"), "status": "ok", "reason": ""})
    return rows[rows["name"].isin(set(names))].reset_index(drop=True)


def prepare_images(paths: Mapping[str, str], work_dir: str | Path) -> pd.DataFrame:
    """name, source, path, split, keep, width, height, reason of every image, decoded once as ingest does.

    A file that decodes only as truncated, or not as RGB, gets an RGB PNG working copy in
    `work_dir` (the workflow's ingest repair), which every later step reads; a file that cannot be
    decoded at all is kept out (keep False, 0 x 0) with the decoder's message as reason.
    """
    from leukoflow.ingest import contract as ingest

    rows = []
    for name, source in paths.items():
        row = {"name": name, "source": source, "path": source, "split": "test", "keep": True, "width": 0,
               "height": 0, "reason": ""}
        try:
            image, truncation = ingest.decode_image(Path(source).read_bytes())
            row["width"], row["height"] = image.size
            if truncation or image.mode != "RGB":
                row["path"] = str(Path(work_dir) / f"{Path(name).stem}.png")
                image.convert("RGB").save(row["path"], format="PNG")
                row["reason"] = "repaired: " + (truncation or f"{image.mode} converted to RGB")
        except Exception as error:  # NOTE: PIL raises many types for undecodable files (as ingest)
            LOGGER.warning("predict: cannot read %s: %s", source, error)
            row.update(keep=False, reason=f"unreadable: {error}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["name", "source", "path", "split", "keep", "width", "height", "reason"])


# ----------------------------------------------------------------------------- threshold mode

def threshold_boxes(raw: pd.DataFrame, width: int, height: int, *, min_score: float, nms_iou: float,
                    wbf_iou: float, wbf_skip: float) -> tuple[np.ndarray, np.ndarray]:
    """One image's cells without a known count: WBF of the boxes >= min_score, NMS, round and clip.

    The threshold applies before the fusion: WBF's fused score is the mean member score, so the
    many near-zero boxes a conf-0.001 detector leaves around a cell would drag it down.
    """
    fused_norm, scores = boxes_lib.weighted_boxes_fusion(
        boxes_lib.normalise(raw[XYXY].to_numpy(), width, height), raw["score"].to_numpy(),
        iou_threshold=wbf_iou, skip_threshold=max(wbf_skip, min_score))
    fused = boxes_lib.denormalise(fused_norm, width, height)
    keep = boxes_lib.nms(fused, scores, nms_iou)
    return boxes_lib.round_and_clip(fused[keep], width, height), scores[keep]


def calibrate_min_score(raw: pd.DataFrame, sizes: pd.DataFrame, counts: pd.Series, *, candidates: Sequence[float],
                        nms_iou: float, wbf_iou: float, wbf_skip: float) -> dict[str, Any]:
    """The candidate threshold whose threshold-mode cell count matches most out-of-fold images.

    Args:
        raw: detector-1 OOF raw boxes (DETECTIONS: each image predicted by the fold model that never saw it).
        sizes: name, width, height of the images; counts: annotated cells per image NAME.

    Returns:
        {"min_score": best, "exact_count_share": {candidate: share}} (ties: the lower threshold).
    """
    raw_by_name = dict(tuple(raw.groupby("name")))
    size = sizes.set_index("name")
    shares = {}
    for candidate in sorted(candidates):
        exact = [len(threshold_boxes(raw_by_name.get(name, raw.iloc[:0]), int(size.at[name, "width"]),
                                     int(size.at[name, "height"]), min_score=candidate, nms_iou=nms_iou,
                                     wbf_iou=wbf_iou, wbf_skip=wbf_skip)[1]) == n for name, n in counts.items()]
        shares[float(candidate)] = round(float(np.mean(exact)), 6) if exact else 0.0
    best = max(shares, key=lambda c: (shares[c], -c))
    return {"min_score": best, "exact_count_share": shares}


# ----------------------------------------------------------------------------- profile

@dataclass(frozen=True)
class Plan:
    """What a profile runs: detector fold files, classifier fold files per model, the ensemble scheme."""

    detector_files: tuple[str, ...]
    classifier_files: dict[str, tuple[str, ...]]
    multiclass: tuple[str, ...]
    multilabel: tuple[str, ...]
    scheme: ensemble.Scheme


def plan_for(bundle: Bundle, profile: str) -> Plan:
    if profile not in PROFILES:
        raise ValueError(f"predict: profile {profile!r} not in {PROFILES}")
    weights = bundle.spec["ensemble"]
    entries = bundle.classifiers
    detector_files = tuple(bundle.spec["detector"]["folds"])
    if profile == "fast":
        top = max(weights["multiclass"], key=lambda name: weights["weights"].get(name, 0.0))
        return Plan(detector_files[:1], {top: tuple(entries[top]["folds"][:1])}, (top,), (),
                    ensemble.Scheme({top: 1.0}, 1.0))
    models = [*weights["multiclass"], *weights["multilabel"]]
    return Plan(detector_files, {name: tuple(entries[name]["folds"]) for name in models},
                tuple(weights["multiclass"]), tuple(weights["multilabel"]),
                ensemble.Scheme(dict(weights["weights"]), float(weights["alpha"])))


# ----------------------------------------------------------------------------- predictor

class Predictor:
    """Loads a bundle's models once; `predict` then runs the whole chain on any images."""

    def __init__(self, bundle: Bundle | str | Path, *, profile: str = "full", device: str = "cpu",
                 threads: int = 1):
        import torch

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.plan = plan_for(self.bundle, profile)
        self.profile = profile
        self.device = device
        torch.set_num_threads(threads)
        settings = self.bundle.spec["classifier_settings"]
        self.amp = bool(settings.get("amp", False))
        self.channels_last = bool(settings.get("channels_last", False))
        self.torch_device = classification.resolve_device(device)
        YOLO = detection.import_yolo()
        self.detectors = [YOLO(str(self.bundle.path(f))) for f in self.plan.detector_files]
        self.classifiers = {name: [self._load_classifier(f) for f in files]
                            for name, files in self.plan.classifier_files.items()}

    def _load_classifier(self, relative: str):
        import torch

        spec, model = classification.load_best(self.bundle.path(relative), self.torch_device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return spec, model

    # --- detection

    def detect(self, paths: Mapping[str, str]) -> pd.DataFrame:
        """Raw boxes of every planned detector fold (name, x1..y2, score, fold), as `detection.predict_images`."""
        arguments = dict(self.bundle.spec["detector"]["predict"])
        names = list(paths)
        frames = []
        for fold, model in enumerate(self.detectors if names else []):
            results = model.predict(source=[paths[n] for n in names], stream=True, agnostic_nms=True,
                                    device=detection.resolve_device(self.device), verbose=False, **arguments)
            for name, result in zip(names, results):
                frame = pd.DataFrame(result.boxes.xyxy.cpu().numpy().astype(np.float64), columns=XYXY)
                frame.insert(0, "name", name)
                frame["score"] = result.boxes.conf.cpu().numpy().astype(np.float64)
                frame["fold"] = fold
                frames.append(frame)
        if not frames:
            return pd.DataFrame({"name": pd.Series(dtype="str"), **{c: pd.Series(dtype="float64") for c in XYXY},
                                 "score": pd.Series(dtype="float64"), "fold": pd.Series(dtype="int64")})
        return pd.concat(frames, ignore_index=True)

    def boxes_with_counts(self, raw: pd.DataFrame, expected: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
        """TEST_BOXES rows: the workflow's WBF + top-N fitting."""
        spec = self.bundle.spec["detector"]
        return detection.fuse_test_boxes(raw, expected, images, wbf_iou=spec["wbf_iou"], wbf_skip=spec["wbf_skip"])

    def boxes_by_threshold(self, raw: pd.DataFrame, images: pd.DataFrame, *, min_score: float,
                           nms_iou: float) -> pd.DataFrame:
        """TEST_BOXES-like rows (trustii_id -1) of `threshold_boxes`, by descending score."""
        spec = self.bundle.spec["detector"]
        raw_by_name = dict(tuple(raw.groupby("name")))
        frames = []
        for image in images.itertuples(index=False):
            if not image.keep:
                box = boxes_lib.full_image_box(2, 2)
                frames.append(pd.DataFrame([{"name": image.name, "x1": box[0], "y1": box[1], "x2": box[2],
                                             "y2": box[3], "score": 0.0, "source": "unreadable"}]))
                continue
            kept, scores = threshold_boxes(raw_by_name.get(image.name, raw.iloc[:0]), image.width, image.height,
                                           min_score=min_score, nms_iou=nms_iou, wbf_iou=spec["wbf_iou"],
                                           wbf_skip=spec["wbf_skip"])
            frame = pd.DataFrame(kept, columns=XYXY)
            frame.insert(0, "name", image.name)
            frame["score"] = scores
            frame["source"] = "detected"
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "trustii_id", np.int64(-1))
        table.insert(0, "row", np.arange(len(table), dtype="int64"))
        return table[tables.TEST_BOXES.column_names]

    # --- classification

    def _inputs(self, fitted: pd.DataFrame, images: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, np.ndarray],
                                                                              dict[int, np.ndarray]]:
        """Readable rows with a crop id, and the crop / whole-image pixels per input size."""
        entries = self.bundle.classifiers
        margin = self.bundle.spec["crops"]["margin"]
        crop_sizes = {entries[n]["img_size"] for n in self.plan.multiclass}
        whole_sizes = {entries[n]["img_size"] for n in self.plan.multilabel}
        usable = fitted[fitted["source"] != "unreadable"].sort_values("row", kind="stable")
        by_name = images.set_index("name")
        crops: dict[int, list[np.ndarray]] = {size: [] for size in crop_sizes}
        whole: dict[int, list[np.ndarray]] = {size: [] for size in whole_sizes}
        ids = []
        for name, rows in usable.groupby("name", sort=False):
            image = crop_cache._open_rgb(by_name.at[name, "path"])
            windows = boxes_lib.expand_and_clip(rows[XYXY].to_numpy(float), margin, *image.size)
            for size in crop_sizes:
                crops[size] += crop_cache._crop_boxes(image, windows, size, f"image {name}")
            for size in whole_sizes:
                whole[size].append(crop_cache.square_resize(image, size))
            ids += [f"{name}#{k}" for k in range(len(rows))]
        ordered = pd.concat([g for _, g in usable.groupby("name", sort=False)]) if len(usable) else usable
        ordered = ordered.assign(id=ids)
        stack = (lambda tiles, size: np.stack(tiles) if tiles else np.zeros((0, size, size, 3), np.uint8))
        return (ordered, {s: stack(t, s) for s, t in crops.items()}, {s: stack(t, s) for s, t in whole.items()})

    def _model_logits(self, name: str, pixels: np.ndarray) -> np.ndarray:
        """Mean over the model's folds of its (TTA-averaged) logits, as `classification.predict_test`."""
        n = len(pixels)
        items = classification.ItemSet(
            source=np.zeros(n, dtype="int64"), row=np.arange(n), target=np.zeros((n, 1), np.float32),
            ids=np.array([""] * n), names=np.array([""] * n), folds=np.full(n, -1), trustii=np.full(n, -1),
            real=np.ones(n, bool), role=np.array(["test"] * n))
        total = None
        for spec, model in self.classifiers[name]:
            logits = classification.predict_logits(model, [pixels], items, batch_size=spec.batch_size,
                                                   device=self.torch_device, tta=spec.tta, amp=self.amp,
                                                   channels_last=self.channels_last)
            total = logits if total is None else total + logits
        return total / len(self.classifiers[name])

    @staticmethod
    def _logits_frame(ids: Sequence[str], names: Sequence[str], trustii: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame({"id": pd.Series(list(ids), dtype="str"), "name": pd.Series(list(names), dtype="str"),
                              "fold": np.full(len(ids), -1, dtype="int64"), "trustii_id": trustii.astype("int64"),
                              "truth": np.full(len(ids), -1, dtype="int64"), "truth_labels": ""})
        columns = pd.DataFrame(logits.astype("float64"), columns=[f"logit_{k}" for k in range(logits.shape[1])])
        return pd.concat([frame, columns], axis=1)

    def classify(self, fitted: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
        """ENSEMBLE_CLASSES rows of every readable box (id = '<name>#<k>', k in row order)."""
        ordered, crop_pixels, image_pixels = self._inputs(fitted, images)
        entries = self.bundle.classifiers
        if not len(ordered):
            return tables.empty_frame(tables.ENSEMBLE_CLASSES)
        trustii = ordered["trustii_id"].to_numpy("int64")
        multiclass = {n: self._logits_frame(ordered["id"], ordered["name"], trustii,
                                            self._model_logits(n, crop_pixels[entries[n]["img_size"]]))
                      for n in self.plan.multiclass}
        image_names = list(dict.fromkeys(ordered["name"]))
        multilabel = {n: self._logits_frame(image_names, image_names, np.full(len(image_names), -1),
                                            self._model_logits(n, image_pixels[entries[n]["img_size"]]))
                      for n in self.plan.multilabel}
        inputs = ensemble.align_inputs(multiclass, multilabel)
        return ensemble.classes_frame(inputs, ensemble.blend(inputs, self.plan.scheme))

    # --- whole chain

    def predict(self, paths: Mapping[str, str], expected: pd.DataFrame | None = None, *,
                min_score: float | None = None, nms_iou: float | None = None) -> pd.DataFrame:
        """PREDICTIONS rows of the images (NAME -> path); `expected`: rows of `read_expected_counts`."""
        import tempfile

        defaults = self.bundle.spec["predict"]
        with tempfile.TemporaryDirectory(prefix="leukoflow-predict-") as work_dir:
            images = prepare_images(paths, work_dir)
            readable = {row.name: row.path for row in images.itertuples(index=False) if row.keep}
            raw = self.detect(readable)
            if expected is not None:
                fitted = self.boxes_with_counts(raw, expected, images)
            else:
                fitted = self.boxes_by_threshold(
                    raw, images, min_score=defaults["min_score"] if min_score is None else min_score,
                    nms_iou=defaults["nms_iou"] if nms_iou is None else nms_iou)
            classes = self.classify(fitted, images)
        return predictions_frame(fitted, classes, images, self.bundle.spec["ensemble"]["fallback_class"])


def predictions_frame(fitted: pd.DataFrame, classes: pd.DataFrame, images: pd.DataFrame,
                      fallback_class: str) -> pd.DataFrame:
    """PREDICTIONS rows: boxes in image input order, then row order; unreadable rows get the fallback class."""
    order = {name: k for k, name in enumerate(images["name"])}
    frame = fitted.sort_values("row", kind="stable").copy()
    frame["rank"] = frame.groupby("name").cumcount().astype("int64")
    frame["id"] = frame["name"] + "#" + frame["rank"].astype(str)
    frame = frame.sort_values(["name", "rank"], key=lambda s: s.map(order) if s.name == "name" else s, kind="stable")
    found = classes.set_index("id")
    label = frame["id"].map(found["label"])
    probability = frame["id"].map(found["probability"])
    rounded = np.round(frame[XYXY].to_numpy(float)).astype("int64")
    paths = images.set_index("name")["source"]
    out = pd.DataFrame({
        "NAME": pd.Series(frame["name"].to_numpy(str), dtype="str"),
        "path": pd.Series(paths.loc[frame["name"]].to_numpy(str), dtype="str"),
        "trustii_id": frame["trustii_id"].to_numpy("int64"), "rank": frame["rank"].to_numpy("int64"),
        **{column: rounded[:, k] for k, column in enumerate(XYXY)},
        "score": frame["score"].to_numpy("float64"),
        "source": pd.Series(frame["source"].to_numpy(str), dtype="str"),
        "class": pd.Series(label.fillna(fallback_class).to_numpy(str), dtype="str"),
        "probability": probability.to_numpy("float64"),
    })
    return tables.validate(out, tables.PREDICTIONS)


def annotate(predictions: pd.DataFrame, out_dir: str | Path) -> int:
    """Write '<stem>.annotated.png' per readable image with its boxes and classes; returns the count."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for (name, path), rows in predictions[predictions["source"] != "unreadable"].groupby(["NAME", "path"], sort=False):
        from leukoflow.ingest import contract as ingest

        image = ingest.decode_image(Path(path).read_bytes())[0].convert("RGB")
        draw = ImageDraw.Draw(image)
        for row in rows.itertuples(index=False):
            draw.rectangle([row.x1, row.y1, row.x2, row.y2], outline=(0, 200, 0), width=2)
            draw.text((row.x1 + 3, row.y1 + 2), f"{row[rows.columns.get_loc('class')]} {row.probability:.2f}",
                      fill=(0, 90, 0))
        image.save(out_dir / f"{Path(name).stem}.annotated.png")
        written += 1
    return written


def run(inputs: Sequence[str | Path], *, bundle: str | Path, out: str | Path, expected_counts: str | Path | None = None,
        profile: str = "full", device: str | None = None, threads: int | None = None,
        min_score: float | None = None, nms_iou: float | None = None,
        annotate_dir: str | Path | None = None) -> dict[str, Any]:
    """Command entry: predict the images, write the CSV (and annotated images); returns a summary."""
    started = time.perf_counter()
    loaded = load_bundle(bundle)
    defaults = loaded.spec["predict"]
    paths = collect_images(inputs)
    expected = read_expected_counts(expected_counts, list(paths)) if expected_counts else None
    predictor = Predictor(loaded, profile=profile, device=device or defaults["device"],
                          threads=threads or defaults["threads"])
    loaded_at = time.perf_counter()
    predictions = predictor.predict(paths, expected, min_score=min_score, nms_iou=nms_iou)
    finished = time.perf_counter()
    tables.write_table(predictions, out, tables.PREDICTIONS)
    summary = {"images": len(paths), "cells": int(len(predictions)), "profile": profile,
               "mode": "expected_counts" if expected is not None else "threshold",
               "unreadable_images": int((predictions["source"] == "unreadable").groupby(predictions["NAME"]).any().sum()),
               "load_seconds": round(loaded_at - started, 3),
               "ms_per_image": round(1000 * (finished - loaded_at) / max(len(paths), 1), 2), "out": str(out)}
    if annotate_dir:
        summary["annotated_images"] = annotate(predictions, annotate_dir)
    return summary
