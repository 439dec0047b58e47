"""What `leukoflow predict` writes: the predictions CSV (appended per chunk), COCO JSON, overlays."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import ImageDraw

from leukoflow import images, tables
from leukoflow.constants import CLASSES

XYXY = ["x1", "y1", "x2", "y2"]
PROBABILITY_COLUMNS = [f"prob_{code}" for code in CLASSES]
PREDICTIONS_CSV = tables.Schema(
    "predictions_csv", tables.PREDICTIONS.path_pattern, tables.PREDICTIONS.description,
    (*tables.PREDICTIONS.columns,
     *(tables.Column(column, "float", f"ensemble probability of {code} (NaN when unreadable)")
       for column, code in zip(PROBABILITY_COLUMNS, CLASSES))))


def predictions_frame(fitted: pd.DataFrame, classes: pd.DataFrame, probabilities: pd.DataFrame,
                      images: pd.DataFrame, fallback_class: str) -> pd.DataFrame:
    """PREDICTIONS_CSV rows: boxes in image input order, then row order; unreadable rows get the fallback class.

    `classes`: ENSEMBLE_CLASSES rows (id '<name>#<rank>'); `probabilities`: per-class probabilities
    indexed by the same ids.
    """
    order = {name: k for k, name in enumerate(images["name"])}
    frame = fitted.sort_values("row", kind="stable").copy()
    frame["rank"] = frame.groupby("name").cumcount().astype("int64")
    frame["id"] = frame["name"] + "#" + frame["rank"].astype(str)
    frame = frame.sort_values(["name", "rank"], key=lambda s: s.map(order) if s.name == "name" else s, kind="stable")
    found = classes.set_index("id")
    rounded = np.round(frame[XYXY].to_numpy(float)).astype("int64")
    by_name = images.set_index("name")
    names = frame["name"].to_numpy(str)
    out = pd.DataFrame({
        "trustii_id": frame["trustii_id"].to_numpy("int64"),
        "NAME": pd.Series(names, dtype="str"),
        **{column: rounded[:, k] for k, column in enumerate(XYXY)},
        "class": pd.Series(frame["id"].map(found["label"]).fillna(fallback_class).to_numpy(str), dtype="str"),
        "probability": frame["id"].map(found["probability"]).to_numpy("float64"),
        "score": frame["score"].to_numpy("float64"),
        "rank": frame["rank"].to_numpy("int64"),
        "source": pd.Series(frame["source"].to_numpy(str), dtype="str"),
        "path": pd.Series(by_name.loc[names, "source"].to_numpy(str), dtype="str"),
        "width": by_name.loc[names, "width"].to_numpy("int64"),
        "height": by_name.loc[names, "height"].to_numpy("int64"),
    })
    per_class = probabilities.reindex(frame["id"].to_numpy(str))
    for column in PROBABILITY_COLUMNS:
        out[column] = per_class[column].to_numpy("float64") if len(per_class) else np.zeros(0)
    return tables.validate(out.reset_index(drop=True), PREDICTIONS_CSV)


def append_rows(frame: pd.DataFrame, path: str | Path) -> None:
    """Append rows to the CSV (header when the file is new) and make them durable before returning."""
    tables.validate(frame, PREDICTIONS_CSV, str(path))
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        frame.to_csv(handle, index=False, header=new)
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(path: str | Path) -> pd.DataFrame:
    """The predictions CSV; an empty float field (an unreadable image's probabilities) reads as NaN,
    an empty text field as ''."""
    kinds = {"str": str, "int": "int64", "float": "float64"}
    floats = [c.name for c in PREDICTIONS_CSV.columns if c.dtype == "float"]
    frame = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in floats},
                        dtype={c.name: kinds[c.dtype] for c in PREDICTIONS_CSV.columns})
    return tables.validate(frame, PREDICTIONS_CSV, str(path))


def write_coco(predictions: pd.DataFrame, images: pd.DataFrame, path: str | Path) -> dict[str, int]:
    """COCO detection JSON: every image (id in input order), one annotation per readable box, the 23 classes.

    `images`: name, width, height of every image in input order. Box = [x, y, width, height];
    `score` is the class probability (COCO results rank by it), `detector_score` the box's.
    """
    image_ids = {name: k + 1 for k, name in enumerate(images["name"])}
    category = {code: k + 1 for k, code in enumerate(CLASSES)}
    readable = predictions[predictions["source"] != "unreadable"]
    annotations = []
    for number, row in enumerate(readable.itertuples(index=False), start=1):
        width, height = int(row.x2 - row.x1), int(row.y2 - row.y1)
        annotations.append({
            "id": number, "image_id": image_ids[row.NAME], "category_id": category[row[readable.columns.get_loc("class")]],
            "bbox": [int(row.x1), int(row.y1), width, height], "area": float(width * height), "iscrowd": 0,
            "score": float(row.probability), "detector_score": float(row.score)})
    document = {
        "info": {"description": "leukoflow predict", "version": "1.0"},
        "images": [{"id": image_ids[r.name], "file_name": r.name, "width": int(r.width), "height": int(r.height)}
                   for r in images.itertuples(index=False)],
        "annotations": annotations,
        "categories": [{"id": category[code], "name": code, "supercategory": "white blood cell"} for code in CLASSES],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document))
    return {"images": len(document["images"]), "annotations": len(annotations)}


def annotate(predictions: pd.DataFrame, out_dir: str | Path) -> int:
    """Write '<id>.annotated.png' (the id's folders kept) per readable image with its boxes and classes."""
    out_dir = Path(out_dir)
    written = 0
    readable = predictions[predictions["source"] != "unreadable"]
    for (name, path), rows in readable.groupby(["NAME", "path"], sort=False):
        image = images.decode_rgb(Path(path).read_bytes()).image
        draw = ImageDraw.Draw(image)
        for row in rows.itertuples(index=False):
            draw.rectangle([row.x1, row.y1, row.x2, row.y2], outline=(0, 200, 0), width=2)
            draw.text((row.x1 + 3, row.y1 + 2), f"{row[rows.columns.get_loc('class')]} {row.probability:.2f}",
                      fill=(0, 90, 0))
        target = out_dir / f"{name}.annotated.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
        written += 1
    return written


def summary_counts(predictions: pd.DataFrame) -> dict[str, Any]:
    unreadable = predictions.loc[predictions["source"] == "unreadable", "NAME"].nunique()
    return {"cells": int((predictions["source"] != "unreadable").sum()), "unreadable_images": int(unreadable)}
