"""The predictor: a bundle's models loaded once, the workflow's test chain run on any images (docs/method.md §10).

1. every planned detector fold predicts every image (ultralytics, class-agnostic NMS, the bundle's
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow import boxes as boxes_lib
from leukoflow import tables
from leukoflow.classification import crop_cache
from leukoflow.classification.items import ItemSet
from leukoflow.classification.model import predict_logits
from leukoflow.detection.fitting import fuse_test_boxes
from leukoflow.engine.devices import resolve_device, torch_device
from leukoflow.ensemble.blending import Scheme, blend, sigmoid, softmax
from leukoflow.ensemble.inputs import EnsembleInputs, align_inputs
from leukoflow.ensemble.weight_search import classes_frame
from leukoflow.inference.bundle import Bundle, load_bundle
from leukoflow.inference.inputs import prepare_images
from leukoflow.inference.outputs import PROBABILITY_COLUMNS, predictions_frame
from leukoflow.inference.thresholds import threshold_boxes

PROFILES = ("full", "fast")
XYXY = ["x1", "y1", "x2", "y2"]


@dataclass(frozen=True)
class Plan:
    """What a profile runs: detector fold files, classifier fold files per model, the ensemble scheme."""

    detector_files: tuple[str, ...]
    classifier_files: dict[str, tuple[str, ...]]
    multiclass: tuple[str, ...]
    multilabel: tuple[str, ...]
    scheme: Scheme


def plan_for(bundle: Bundle, profile: str) -> Plan:
    if profile not in PROFILES:
        raise ValueError(f"predict: profile {profile!r} not in {PROFILES}")
    weights = bundle.spec["ensemble"]
    entries = bundle.classifiers
    detector_files = tuple(bundle.spec["detector"]["folds"])
    if profile == "fast":
        top = max(weights["multiclass"], key=lambda name: weights["weights"].get(name, 0.0))
        return Plan(detector_files[:1], {top: tuple(entries[top]["folds"][:1])}, (top,), (),
                    Scheme({top: 1.0}, 1.0))
    models = [*weights["multiclass"], *weights["multilabel"]]
    return Plan(detector_files, {name: tuple(entries[name]["folds"]) for name in models},
                tuple(weights["multiclass"]), tuple(weights["multilabel"]),
                Scheme(dict(weights["weights"]), float(weights["alpha"])))


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
        self.torch_device = torch_device(device)
        self.detectors = [self.bundle.detector(f) for f in self.plan.detector_files]
        self.classifiers = {name: [self._load_classifier(name, f) for f in files]
                            for name, files in self.plan.classifier_files.items()}

    def _load_classifier(self, name: str, relative: str):
        import torch

        spec, model = self.bundle.classifier(name, relative, self.torch_device)
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
                                    device=resolve_device(self.device), verbose=False, **arguments)
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
        return fuse_test_boxes(raw, expected, images, wbf_iou=spec["wbf_iou"], wbf_skip=spec["wbf_skip"])

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
        items = ItemSet(
            source=np.zeros(n, dtype="int64"), row=np.arange(n), target=np.zeros((n, 1), np.float32),
            ids=np.array([""] * n), names=np.array([""] * n), folds=np.full(n, -1), trustii=np.full(n, -1),
            real=np.ones(n, bool), role=np.array(["test"] * n))
        total = None
        for spec, model in self.classifiers[name]:
            logits = predict_logits(model, [pixels], items, batch_size=spec.batch_size,
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

    def classify(self, fitted: pd.DataFrame, images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """ENSEMBLE_CLASSES rows of every readable box (id = '<name>#<k>', k in row order), and the
        per-class probabilities of those boxes (prob_<class> columns, indexed by id)."""
        ordered, crop_pixels, image_pixels = self._inputs(fitted, images)
        entries = self.bundle.classifiers
        if not len(ordered):
            return tables.empty_frame(tables.ENSEMBLE_CLASSES), pd.DataFrame(columns=PROBABILITY_COLUMNS, dtype="float64")
        trustii = ordered["trustii_id"].to_numpy("int64")
        multiclass = {n: self._logits_frame(ordered["id"], ordered["name"], trustii,
                                            self._model_logits(n, crop_pixels[entries[n]["img_size"]]))
                      for n in self.plan.multiclass}
        image_names = list(dict.fromkeys(ordered["name"]))
        multilabel = {n: self._logits_frame(image_names, image_names, np.full(len(image_names), -1),
                                            self._model_logits(n, image_pixels[entries[n]["img_size"]]))
                      for n in self.plan.multilabel}
        inputs = align_inputs(multiclass, multilabel)
        classes = classes_frame(inputs, blend(inputs, self.plan.scheme))
        return classes, class_probabilities(inputs, self.plan.scheme)

    # --- whole chain

    def predict_images(self, images: pd.DataFrame, expected: pd.DataFrame | None = None, *,
                       min_score: float | None = None, nms_iou: float | None = None) -> pd.DataFrame:
        """PREDICTIONS_CSV rows of prepared images (`inputs.prepare_images`); `expected`: their
        rows of `inputs.read_expected_counts`, None for threshold mode."""
        defaults = self.bundle.spec["predict"]
        readable = {row.name: row.path for row in images.itertuples(index=False) if row.keep}
        raw = self.detect(readable)
        if expected is not None:
            fitted = self.boxes_with_counts(raw, expected, images)
        else:
            fitted = self.boxes_by_threshold(
                raw, images, min_score=defaults["min_score"] if min_score is None else min_score,
                nms_iou=defaults["nms_iou"] if nms_iou is None else nms_iou)
        classes, probabilities = self.classify(fitted, images)
        return predictions_frame(fitted, classes, probabilities, images, self.bundle.spec["ensemble"]["fallback_class"])

    def predict(self, paths: Mapping[str, str], expected: pd.DataFrame | None = None, *,
                min_score: float | None = None, nms_iou: float | None = None) -> pd.DataFrame:
        """`predict_images` of image files (id -> path), prepared in a temporary folder."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="leukoflow-predict-") as work_dir:
            images = prepare_images(paths, work_dir)
            return self.predict_images(images, expected, min_score=min_score, nms_iou=nms_iou)


def class_probabilities(inputs: EnsembleInputs, scheme: Scheme) -> pd.DataFrame:
    """The blend's full probability matrix (ensemble.blend keeps only the winning class's), by crop id."""
    weights = np.array([scheme.weights.get(name, 0.0) for name in inputs.mc_names])
    probability = softmax(np.tensordot(weights, inputs.mc_logits, axes=1))
    use_ml = inputs.single_cell & inputs.has_ml & (scheme.alpha < 1.0)
    if use_ml.any():
        probability[use_ml] = (scheme.alpha * probability[use_ml]
                               + (1.0 - scheme.alpha) * sigmoid(inputs.ml_logits[use_ml]))
    return pd.DataFrame(probability.astype("float64"), columns=PROBABILITY_COLUMNS,
                        index=pd.Index(inputs.ids, dtype="str"))
