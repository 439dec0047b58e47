"""The model bundle: everything `leukoflow predict` needs, in one directory, loadable without the workflow.

Layout::

    bundle.json                          settings: detector (architecture file, prediction and WBF
                                         arguments, fold files), crop margin, classifiers (spec, fold
                                         files), ensemble weights, predict defaults, versions
    detector/<arch>.yaml                 the detector's architecture (ultralytics model YAML)
    detector/fold<k>.safetensors         detector fold weights
    classifiers/<model>/fold<k>.safetensors   classifier fold weights
    MODEL_CARD.md                        intended use, classes, per-class OOF F1, data, limits
    MANIFEST.sha256                      `sha256sum` lines of every other file

Weights are safetensors only: nothing in a bundle is unpickled, so a bundle from elsewhere cannot
run code when loaded (`weights.py`). `load_bundle` verifies the manifest before anything is read;
the SHA-256 of MANIFEST.sha256 identifies the bundle (recorded in the export summary and MLflow,
checked with `expected_sha256`).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from leukoflow import tables
from leukoflow.constants import BACKGROUND_CLASS, CLASSES
from leukoflow.engine.provenance import file_sha256 as sha256_of, installed_versions
from leukoflow.engine.runtime import tracked
from leukoflow.inference import model_card, thresholds
from leukoflow.inference import weights as weight_files

BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "MANIFEST.sha256"
FORMAT_VERSION = 2
VERSIONED_PACKAGES = ("leukoflow", "torch", "torchvision", "ultralytics", "timm", "numpy", "pandas", "pillow",
                      "safetensors")


class BundleError(ValueError):
    """A bundle that is incomplete, altered, unsafe or of an unknown format; the message names the file."""


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **installed_versions(VERSIONED_PACKAGES)}


# ----------------------------------------------------------------------------- export

@tracked
def export_bundle(*, bundle: str | Path, detector_weights: Sequence[str | Path],
                  classifier_checkpoints: Sequence[str | Path], ensemble_weights: str | Path,
                  oof_raw: Sequence[str | Path], oof_classes: str | Path, images: str | Path, boxes: str | Path,
                  detector_name: str, detector_predict: Mapping[str, Any], wbf_iou: float, wbf_skip: float,
                  margin: float, classifier_models: Sequence[str], classifier_settings: Mapping[str, Any],
                  predict_settings: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Write the bundle directory from the run's outputs; returns the summary.

    Args:
        bundle: output directory (replaced).
        detector_weights: the test detector's fold weight files, fold order.
        classifier_checkpoints: `best.pt` of every model in `classifier_models` x every fold, model-major
            (Snakemake's `expand` order); only the models the ensemble uses are bundled.
        ensemble_weights: weights.json of the ensemble search; oof_classes: its OOF classes (per-class F1).
        oof_raw, images, boxes: detector OOF raw boxes, CURATED_IMAGES and CURATED_BOXES (threshold
            calibration and the model card's data section).
        detector_predict: ultralytics predict arguments of the detector (imgsz, conf, iou, max_det, batch).
        classifier_settings: run-level settings that change the logits (amp, channels_last).
        predict_settings: the `predict` config section; dataset: a one-line description of the data.
    """
    started = time.perf_counter()
    root = Path(bundle)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    weights = json.loads(Path(ensemble_weights).read_text())
    checkpoints = _checkpoints_by_model(classifier_checkpoints, classifier_models)
    needed = sorted(set(weights["multiclass"]) | set(weights["multilabel"]))
    missing = [name for name in needed if name not in checkpoints]
    if missing:
        raise BundleError(f"bundle: the ensemble uses classifier(s) {missing} but no checkpoints were given")
    spec = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASSES), "background_class": BACKGROUND_CLASS,
        "detector": {"name": detector_name, "predict": dict(detector_predict), "wbf_iou": wbf_iou,
                     "wbf_skip": wbf_skip, **_export_detector(detector_weights, root)},
        "crops": {"margin": margin},
        "classifiers": [_export_classifier(name, checkpoints[name], root) for name in needed],
        "classifier_settings": dict(classifier_settings),
        "ensemble": weights,
        "predict": predict_defaults(predict_settings, wbf_iou=wbf_iou, wbf_skip=wbf_skip, oof_raw=oof_raw,
                                    images=images, boxes=boxes),
        "versions": package_versions(),
    }
    (root / BUNDLE_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    f1 = model_card.per_class_f1(tables.read_table(oof_classes, tables.ENSEMBLE_CLASSES))
    data = model_card.training_data(tables.read_table(boxes, tables.CURATED_BOXES),
                                    tables.read_table(images, tables.CURATED_IMAGES))
    model_card.write(root, model_card.render(spec, f1=f1, data=data, dataset=dataset))
    files = write_manifest(root)
    return {"files": len(files), "megabytes": round(sum(p.stat().st_size for p in files) / 2**20, 2),
            "manifest_sha256": sha256_of(root / MANIFEST_FILE),
            "min_score": spec["predict"]["min_score"], "min_score_source": spec["predict"]["min_score_source"],
            "oof_exact_count_share": spec["predict"].get("oof_exact_count_share"),
            "detector_folds": len(detector_weights), "classifiers": needed,
            "classifier_files": sum(len(checkpoints[n]) for n in needed),
            "oof_macro_f1": round(sum(v for v in f1.values() if v is not None)
                                  / max(sum(v is not None for v in f1.values()), 1), 4),
            "export_seconds": round(time.perf_counter() - started, 3)}


def _checkpoints_by_model(paths: Sequence[str | Path], models: Sequence[str]) -> dict[str, list[str]]:
    if not models or len(paths) % len(models):
        raise BundleError(f"bundle: {len(paths)} classifier checkpoint(s) cannot be split over models {list(models)}")
    per_model = len(paths) // len(models)
    return {name: [str(p) for p in paths[k * per_model:(k + 1) * per_model]] for k, name in enumerate(models)}


def _export_detector(fold_weights: Sequence[str | Path], root: Path) -> dict[str, Any]:
    folds, architecture_file = [], None
    for fold, path in enumerate(fold_weights):
        architecture, state = weight_files.read_detector_checkpoint(path)
        if architecture_file is None:
            name = PurePosixPath(str(architecture.get("yaml_file") or "detector.yaml")).name
            architecture_file = f"detector/{Path(name).stem}{weight_files.YAML_SUFFIX}"
            weight_files.write_detector_yaml(architecture, root / architecture_file)
        target = f"detector/fold{fold}{weight_files.SAFETENSORS_SUFFIX}"
        weight_files.save_state(state, root / target)
        folds.append(target)
    return {"architecture": architecture_file, "folds": folds}


def _export_classifier(name: str, checkpoints: Sequence[str], root: Path) -> dict[str, Any]:
    files, spec = [], None
    for fold, path in enumerate(checkpoints):
        spec, state = weight_files.read_classifier_checkpoint(path)
        target = f"classifiers/{name}/fold{fold}{weight_files.SAFETENSORS_SUFFIX}"
        weight_files.save_state(state, root / target)
        files.append(target)
    spec = {**spec, "weights": ""}
    return {"name": name, "kind": spec["kind"], "img_size": int(spec["img_size"]), "tta": spec["tta"],
            "background": bool(spec["background"]), "batch_size": int(spec["batch_size"]), "spec": spec,
            "folds": files}


def write_manifest(root: str | Path) -> list[Path]:
    """MANIFEST.sha256 over every other file of the bundle; returns those files."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    lines = [f"{sha256_of(p)}  {p.relative_to(root).as_posix()}" for p in files]
    (root / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return files


def predict_defaults(settings: Mapping[str, Any], *, wbf_iou: float, wbf_skip: float,
                     oof_raw: Sequence[str | Path], images: str | Path | None,
                     boxes: str | Path | None) -> dict[str, Any]:
    """The bundle's `predict` section: the config's, with min_score calibrated on OOF when asked."""
    defaults = {key: value for key, value in settings.items()
                if key not in ("calibrate_min_score", "min_score_candidates")}
    defaults["min_score_source"] = "config"
    if not settings.get("calibrate_min_score"):
        return defaults
    if not (oof_raw and images and boxes):
        raise BundleError("bundle: calibrate_min_score needs the detector's OOF raw boxes, the images and the boxes")
    import pandas as pd

    raw = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in oof_raw], ignore_index=True)
    counts = tables.read_table(boxes, tables.CURATED_BOXES).groupby("name").size()
    sizes = tables.read_table(images, tables.CURATED_IMAGES)[["name", "width", "height"]]
    found = thresholds.calibrate_min_score(raw, sizes, counts, candidates=settings["min_score_candidates"],
                                           nms_iou=settings["nms_iou"], wbf_iou=wbf_iou, wbf_skip=wbf_skip)
    defaults.update(min_score=found["min_score"], min_score_source="oof",
                    oof_exact_count_share={str(k): v for k, v in found["exact_count_share"].items()})
    return defaults


# ----------------------------------------------------------------------------- load

@dataclass(frozen=True)
class Bundle:
    root: Path
    spec: dict[str, Any]

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def classifiers(self) -> dict[str, dict[str, Any]]:
        return {entry["name"]: entry for entry in self.spec["classifiers"]}

    @property
    def manifest_sha256(self) -> str:
        return sha256_of(self.root / MANIFEST_FILE)

    def model_card(self) -> str:
        path = self.root / model_card.CARD_FILE
        return path.read_text() if path.is_file() else f"(bundle {self.root} has no {model_card.CARD_FILE})\n"

    def detector(self, relative: str):
        """A detector fold rebuilt from the bundle's architecture YAML and safetensors weights."""
        return self._safely(relative, lambda: weight_files.build_detector(
            self.path(self.spec["detector"]["architecture"]), self.path(relative)))

    def classifier(self, name: str, relative: str, device: Any):
        """(ClassifierSpec, model) of one classifier fold, rebuilt from its spec."""
        return self._safely(relative, lambda: weight_files.build_classifier(
            self.classifiers[name]["spec"], self.path(relative), device))

    def _safely(self, relative: str, build):
        try:
            return build()
        except weight_files.UnsafeWeightsError as error:
            raise BundleError(f"bundle {self.root}: {relative}: {error}") from error


def verify_manifest(root: str | Path) -> int:
    """Check every manifest line; returns the number of files checked.

    Raises:
        BundleError: the manifest is missing, names a path outside the bundle, or a file is missing
            or differs (named).
    """
    root = Path(root)
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise BundleError(f"bundle {root}: {MANIFEST_FILE} is missing")
    count = 0
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        expected, _, relative = line.partition("  ")
        _check_relative(root, relative, f"manifest line {number}")
        path = root / relative
        if not path.is_file():
            raise BundleError(f"bundle {root}: {relative} (manifest line {number}) is missing")
        if sha256_of(path) != expected:
            raise BundleError(f"bundle {root}: {relative} does not match its checksum (manifest line {number})")
        count += 1
    return count


def load_bundle(root: str | Path, *, verify: bool = True, expected_sha256: str | None = None) -> Bundle:
    """Read bundle.json after checking the manifest (unless `verify` is False) and, when given,
    that the manifest's SHA-256 is `expected_sha256` (the bundle's published identity)."""
    root = Path(root)
    if not (root / BUNDLE_FILE).is_file():
        raise BundleError(f"{root} is not a bundle: {BUNDLE_FILE} is missing")
    if expected_sha256 is not None:
        found = sha256_of(root / MANIFEST_FILE) if (root / MANIFEST_FILE).is_file() else "no manifest"
        if found != expected_sha256.strip().lower():
            raise BundleError(f"bundle {root}: {MANIFEST_FILE} has SHA-256 {found}, expected {expected_sha256}: "
                              "this is not the published bundle")
    if verify:
        verify_manifest(root)
    spec = json.loads((root / BUNDLE_FILE).read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle {root}: format_version {spec.get('format_version')!r}, expected {FORMAT_VERSION} "
                          "(format 1 bundles hold pickled checkpoints, which can run code when loaded; export the "
                          "bundle again with this leukoflow)")
    if list(spec["classes"]) != list(CLASSES):
        raise BundleError(f"bundle {root}: its class map differs from this leukoflow's constants.CLASSES")
    _check_weight_files(root, spec)
    return Bundle(root, spec)


def _check_weight_files(root: Path, spec: Mapping[str, Any]) -> None:
    """Every file the spec names is a safetensors (or the architecture a YAML) file inside the bundle."""
    named = [(spec["detector"]["architecture"], weight_files.YAML_SUFFIX)]
    named += [(path, weight_files.SAFETENSORS_SUFFIX) for path in spec["detector"]["folds"]]
    named += [(path, weight_files.SAFETENSORS_SUFFIX) for entry in spec["classifiers"] for path in entry["folds"]]
    for relative, suffix in named:
        _check_relative(root, relative, BUNDLE_FILE)
        if not relative.endswith(suffix):
            raise BundleError(f"bundle {root}: {BUNDLE_FILE} names {relative}; only {suffix} files are loaded there "
                              "(pickled checkpoints can run code and are refused)")


def _check_relative(root: Path, relative: str, where: str) -> None:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise BundleError(f"bundle {root}: {where} names {relative!r}, a path outside the bundle")
