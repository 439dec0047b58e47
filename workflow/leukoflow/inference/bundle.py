"""The model bundle: everything `leukoflow predict` needs, in one directory, loadable without the workflow.

Layout::

    bundle.json          settings: detector (prediction and WBF arguments, fold files), crop margin,
                         classifiers (kind, size, TTA, fold files), ensemble weights, predict
                         defaults, class map, package versions
    detector/fold<k>.pt  detector-1 fold weights (ultralytics checkpoints)
    classifiers/<model>/fold<k>.pt   classifier fold checkpoints (`classification.load_best` format)
    MANIFEST.sha256      `sha256sum` lines of every other file (check with `sha256sum -c MANIFEST.sha256`)

`load_bundle` verifies the manifest before anything is read, so a truncated or edited file is
refused with its name.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leukoflow.constants import BACKGROUND_CLASS, CLASSES
from leukoflow.engine.provenance import file_sha256 as sha256_of, installed_versions

BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "MANIFEST.sha256"
FORMAT_VERSION = 1
VERSIONED_PACKAGES = ("leukoflow", "torch", "torchvision", "ultralytics", "timm", "numpy", "pandas", "pillow")


class BundleError(ValueError):
    """A bundle that is incomplete, altered or of an unknown format; the message names the file."""


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **installed_versions(VERSIONED_PACKAGES)}


def _classifier_entry(name: str, checkpoints: Sequence[str | Path], root: Path) -> dict[str, Any]:
    import torch

    spec = torch.load(checkpoints[0], map_location="cpu", weights_only=False)["spec"]
    files = []
    for fold, path in enumerate(checkpoints):
        target = Path("classifiers") / name / f"fold{fold}.pt"
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / target)
        files.append(target.as_posix())
    return {"name": name, "kind": spec["kind"], "img_size": int(spec["img_size"]), "tta": spec["tta"],
            "background": bool(spec["background"]), "batch_size": int(spec["batch_size"]), "folds": files}


def export_bundle(*, out_dir: str | Path, detector_name: str, detector_weights: Sequence[str | Path],
                  detector_predict: Mapping[str, Any], wbf_iou: float, wbf_skip: float, margin: float,
                  classifiers: Mapping[str, Sequence[str | Path]], classifier_settings: Mapping[str, Any],
                  ensemble_weights: str | Path, predict_settings: Mapping[str, Any],
                  oof_raw: Sequence[str | Path] = (), images: str | Path | None = None,
                  boxes: str | Path | None = None) -> dict[str, Any]:
    """Copy the weights into `out_dir`, write bundle.json and the manifest; returns the summary.

    Args:
        detector_weights: detector-1 fold weight files, fold order.
        detector_predict: ultralytics predict arguments of that detector (imgsz, conf, iou, max_det, batch).
        classifiers: model name -> fold checkpoint files (fold order); every model the ensemble uses.
        classifier_settings: run-level classification settings that change the logits (amp, channels_last).
        ensemble_weights: the weights.json written by the ensemble search.
        predict_settings: `predict` config section (threshold-mode defaults, device, threads). With
            `calibrate_min_score`, the threshold-mode `min_score` is the candidate that gives the
            right cell count on most out-of-fold images (`oof_raw`: the detector's OOF raw boxes,
            `images`: CURATED_IMAGES, `boxes`: CURATED_BOXES for the counts).
    """
    started = time.perf_counter()
    root = Path(out_dir)
    if root.exists():
        shutil.rmtree(root)
    (root / "detector").mkdir(parents=True)
    weights = json.loads(Path(ensemble_weights).read_text())
    needed = set(weights["multiclass"]) | set(weights["multilabel"])
    missing = sorted(needed - set(classifiers))
    if missing:
        raise BundleError(f"bundle: the ensemble uses classifier(s) {missing} but no checkpoints were given")
    detector_files = []
    for fold, path in enumerate(detector_weights):
        target = Path("detector") / f"fold{fold}.pt"
        shutil.copyfile(path, root / target)
        detector_files.append(target.as_posix())
    spec = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASSES), "background_class": BACKGROUND_CLASS,
        "detector": {"name": detector_name, "predict": dict(detector_predict), "wbf_iou": wbf_iou,
                     "wbf_skip": wbf_skip, "folds": detector_files},
        "crops": {"margin": margin},
        "classifiers": [_classifier_entry(name, classifiers[name], root) for name in sorted(needed)],
        "classifier_settings": dict(classifier_settings),
        "ensemble": weights,
        "predict": predict_defaults(predict_settings, wbf_iou=wbf_iou, wbf_skip=wbf_skip, oof_raw=oof_raw,
                                    images=images, boxes=boxes),
        "versions": package_versions(),
    }
    (root / BUNDLE_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    lines = [f"{sha256_of(p)}  {p.relative_to(root).as_posix()}" for p in files]
    (root / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return {"files": len(files), "megabytes": round(sum(p.stat().st_size for p in files) / 2**20, 2),
            "min_score": spec["predict"]["min_score"], "min_score_source": spec["predict"]["min_score_source"],
            "oof_exact_count_share": spec["predict"].get("oof_exact_count_share"),
            "detector_folds": len(detector_files), "classifiers": sorted(needed),
            "classifier_files": sum(len(classifiers[n]) for n in needed),
            "export_seconds": round(time.perf_counter() - started, 3)}


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

    from leukoflow.inference import predict

    from leukoflow import tables

    raw = pd.concat([tables.read_table(path, tables.DETECTIONS) for path in oof_raw], ignore_index=True)
    counts = tables.read_table(boxes, tables.CURATED_BOXES).groupby("name").size()
    sizes = tables.read_table(images, tables.CURATED_IMAGES)[["name", "width", "height"]]
    found = predict.calibrate_min_score(raw, sizes, counts,  # every kept training image was predicted OOF

                                        candidates=settings["min_score_candidates"], nms_iou=settings["nms_iou"],
                                        wbf_iou=wbf_iou, wbf_skip=wbf_skip)
    defaults.update(min_score=found["min_score"], min_score_source="oof",
                    oof_exact_count_share={str(k): v for k, v in found["exact_count_share"].items()})
    return defaults


@dataclass(frozen=True)
class Bundle:
    root: Path
    spec: dict[str, Any]

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def classifiers(self) -> dict[str, dict[str, Any]]:
        return {entry["name"]: entry for entry in self.spec["classifiers"]}


def verify_manifest(root: str | Path) -> int:
    """Check every manifest line; returns the number of files checked.

    Raises:
        BundleError: the manifest is missing, or a file is missing or differs (named).
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
        path = root / relative
        if not path.is_file():
            raise BundleError(f"bundle {root}: {relative} (manifest line {number}) is missing")
        if sha256_of(path) != expected:
            raise BundleError(f"bundle {root}: {relative} does not match its checksum (manifest line {number})")
        count += 1
    return count


def load_bundle(root: str | Path, *, verify: bool = True) -> Bundle:
    """Read bundle.json (after checking the manifest unless `verify` is False)."""
    root = Path(root)
    if not (root / BUNDLE_FILE).is_file():
        raise BundleError(f"{root} is not a bundle: {BUNDLE_FILE} is missing")
    if verify:
        verify_manifest(root)
    spec = json.loads((root / BUNDLE_FILE).read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle {root}: format_version {spec.get('format_version')!r}, expected {FORMAT_VERSION}")
    if list(spec["classes"]) != list(CLASSES):
        raise BundleError(f"bundle {root}: its class map differs from this leukoflow's constants.CLASSES")
    return Bundle(root, spec)
