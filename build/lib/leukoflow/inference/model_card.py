"""MODEL_CARD.md of a bundle: what the model is for, its classes, how well each is recognised, its limits.

Written at export from the run's own tables (out-of-fold classes, curated boxes), so its figures
are the run's; `leukoflow predict --about` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow.constants import CLASSES

CARD_FILE = "MODEL_CARD.md"

CELL_NAMES = {
    "PNN": "neutrophil", "LY": "lymphocyte", "MO": "monocyte", "EO": "eosinophil", "BA": "basophil",
    "Er": "erythroblast", "PM": "promyelocyte", "Thromb": "giant platelet", "LAM3": "APL (AML M3) cell",
    "Lysee": "lysed / smudge cell", "LyB": "lymphoblast", "LLC": "CLL lymphocyte", "MBL": "myeloblast",
    "LGL": "large granular lymphocyte", "B": "undifferentiated blast", "M": "myelocyte", "MM": "metamyelocyte",
    "LF": "follicular lymphoma cell", "MoB": "monoblast", "LH_lyAct": "activated lymphocyte",
    "LM": "mantle-cell lymphoma cell", "LZMG": "marginal-zone lymphoma cell", "SS": "Sézary cell",
}

LIMITS = (
    "Trained on the smears of one data set; other stains (May-Grünwald-Giemsa vs Wright vs others), "
    "staining intensity, scanners, camera white balance, magnification and JPEG quality shift the "
    "images away from the training data, and accuracy there is unknown until measured on labelled "
    "images from the new source.",
    "Finds and classifies white cells only; red cells and platelets clumps are not reported "
    "(giant platelets are a class).",
    "Without --expected-counts the number of cells per image comes from a confidence threshold "
    "calibrated on out-of-fold images; check the counts on your images.",
    "Class probabilities are ensemble outputs, not calibrated risks.",
    "A research model: not a medical device and not for diagnosis.",
)


def per_class_f1(oof_classes: pd.DataFrame) -> dict[str, float | None]:
    """Out-of-fold F1 per class code (None for a class absent from both truth and prediction)."""
    from sklearn.metrics import f1_score

    scored = oof_classes[oof_classes["truth"] >= 0]
    labels = list(range(len(CLASSES)))
    values = f1_score(scored["truth"], scored["class_idx"], labels=labels, average=None, zero_division=0)
    present = set(scored["truth"]) | set(scored["class_idx"])
    return {code: (round(float(values[k]), 4) if k in present else None) for k, code in enumerate(CLASSES)}


def training_data(boxes: pd.DataFrame, images: pd.DataFrame) -> dict[str, Any]:
    """Counts of the curated training data: images, boxes, boxes per class."""
    kept = images[images["keep"]] if "keep" in images.columns else images
    train = kept[kept["split"] == "train"] if "split" in kept.columns else kept
    per_class = boxes["label"].value_counts() if len(boxes) else pd.Series(dtype="int64")
    return {"images": int(len(train)), "boxes": int(len(boxes)),
            "boxes_per_class": {code: int(per_class.get(code, 0)) for code in CLASSES}}


def render(spec: Mapping[str, Any], *, f1: Mapping[str, float | None], data: Mapping[str, Any],
           dataset: str) -> str:
    """The card's Markdown."""
    weights = spec["ensemble"]
    scored = [v for v in f1.values() if v is not None]
    lines = [
        "# Model card: leukoflow white-blood-cell detector and classifier",
        "",
        "## Intended use",
        "",
        "Finds white blood cells in images of stained peripheral-blood smears and names each cell with one of "
        f"{len(CLASSES)} classes, for research on automated differential counts and for comparing methods on "
        "the Cytologia challenge data. Not a medical device; not for diagnosis or patient care.",
        "",
        "## Model",
        "",
        f"- Detector: `{spec['detector']['name']}`, {len(spec['detector']['folds'])} fold model(s) fused by weighted "
        f"boxes fusion (IoU {spec['detector']['wbf_iou']}), input {spec['detector']['predict'].get('imgsz')} px.",
        "- Classifiers: " + ", ".join(_classifier_line(c) for c in spec["classifiers"]) + ".",
        f"- Ensemble: weights {json_like(weights.get('weights', {}))}, alpha {weights.get('alpha')} "
        "(single-cell images blend the multi-label model).",
        f"- Threshold mode: min_score {spec['predict']['min_score']} ({spec['predict']['min_score_source']}), "
        f"NMS IoU {spec['predict']['nms_iou']}.",
        f"- Created {spec['created']} with " + ", ".join(f"{k} {v}" for k, v in sorted(spec["versions"].items())) + ".",
        "",
        "## Classes and out-of-fold F1",
        "",
        f"Macro F1 over the classes present: **{np.mean(scored):.4f}**" if scored else "No out-of-fold F1 available.",
        "",
        "| code | cell | training boxes | OOF F1 |",
        "|---|---|---|---|",
    ]
    per_class = data.get("boxes_per_class", {})
    for code in CLASSES:
        value = f1.get(code)
        lines.append(f"| {code} | {CELL_NAMES[code]} | {per_class.get(code, 0)} | "
                     f"{'-' if value is None else f'{value:.4f}'} |")
    lines += [
        "",
        "OOF F1: each training crop classified by the fold models that did not see it, blended as at "
        "prediction time. Fold checkpoints were chosen on the same folds, so these figures are slightly optimistic.",
        "",
        "## Data",
        "",
        f"- Source: {dataset}.",
        f"- Training images after curation: {data.get('images', 0)}; annotated cells: {data.get('boxes', 0)}.",
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in LIMITS],
        "",
        "## Checking a bundle",
        "",
        "`sha256sum -c MANIFEST.sha256` inside the bundle checks every file; the SHA-256 of MANIFEST.sha256 "
        "itself identifies the bundle (`leukoflow predict --about` prints it; compare it with the value "
        "published with the release).",
        "",
    ]
    return "\n".join(lines)


def json_like(weights: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {float(value):.3f}" for name, value in sorted(weights.items())) + "}"


def write(root: str | Path, text: str) -> Path:
    path = Path(root) / CARD_FILE
    path.write_text(text)
    return path


def _classifier_line(entry: Mapping[str, Any]) -> str:
    return f"`{entry['name']}` ({entry['kind']}, {entry['img_size']} px, {len(entry['folds'])} folds)"
