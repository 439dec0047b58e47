"""Review round trip: people fix the flagged labels instead of only losing them.

`leukoflow review export` writes every image with a flag (noisy box or label issue) as a Label
Studio task whose pre-annotation is the current boxes with the model's proposal (a red-cell box
left out, a suspicious class replaced by the classifiers' choice, an unannotated cell added), and
the same items as COCO JSON (checked by loading it with pycocotools). `leukoflow review import`
reads Label Studio's JSON export back and writes the reviewed-overrides table (schema
`tables.REVIEW_OVERRIDES`). Named in `noisy.overrides`, the table is applied by `apply_review`
before detector 2 and the classifier crops: every override is a ledger line, and a reviewed image
is no longer excluded (the reviewer's boxes replace the flagged ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow import constants, ledger, tables

HELP = "export flagged boxes/labels for review (Label Studio, COCO) and import the reviewed overrides"
XYXY = ["x1", "y1", "x2", "y2"]
MOVED_PX = 0.5  # a reviewed coordinate that moved less than this is unchanged (percent round-off)
ACTIONS = ("keep_image", "delete_box", "set_box", "add_box", "relabel")


# ----------------------------------------------------------------------------- export

def _region(region_id: str, box: np.ndarray, label: str, width: int, height: int) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"id": region_id, "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                      "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [label]}}


def proposals(flags: pd.DataFrame, label_flags: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """The model's proposal per flagged image: its boxes with relabels, minus condemned boxes, plus new cells."""
    names = sorted(set(flags["name"]) | set(label_flags.loc[label_flags["issue"], "name"]))
    current = boxes[boxes["name"].isin(names)].assign(region=lambda f: "row" + f["row"].astype(str))
    relabel = label_flags[label_flags["issue"]].set_index("row")["proposed"]
    current["label"] = relabel.reindex(current["row"]).fillna(pd.Series(current["label"].to_numpy(),
                                                                        index=current["row"])).to_numpy()
    gone = set(flags.loc[flags["reason"] == "unconfirmed_box", "row"])
    current = current[~current["row"].isin(gone)]
    cells = flags[flags["reason"] == "unannotated_cell"]
    common = current.groupby("name")["label"].agg(lambda labels: labels.mode().iloc[0])  # after relabels
    added = pd.DataFrame({"name": cells["name"], **{c: cells[c] for c in XYXY},
                          "label": cells["name"].map(common).fillna(constants.CLASSES[0]),
                          "region": [f"new{k}" for k in range(len(cells))]})
    return pd.concat([current[["name", *XYXY, "label", "region"]], added], ignore_index=True)


def evidence_notes(flags: pd.DataFrame, label_flags: pd.DataFrame) -> dict[str, str]:
    notes: dict[str, list[str]] = {}
    for flag in flags.itertuples(index=False):
        notes.setdefault(flag.name, []).append(f"{flag.reason} row {flag.row}: evidence {flag.evidence:.2f}, "
                                               f"IoU {flag.iou:.2f}, P(cell) {flag.score:.2f}")
    for flag in label_flags[label_flags["issue"]].itertuples(index=False):
        notes.setdefault(flag.name, []).append(f"label row {flag.row}: {flag.label} -> {flag.proposed} "
                                               f"(quality {flag.quality:.2f})")
    return {name: "; ".join(lines) for name, lines in notes.items()}


def export_review(flags: pd.DataFrame, label_flags: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame,
                  out_dir: str | Path) -> dict[str, Any]:
    """Write `label_studio_tasks.json` and `coco.json` into out_dir; COCO is checked with pycocotools."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proposed = proposals(flags, label_flags, boxes)
    notes = evidence_notes(flags, label_flags)
    image_of = images.set_index("name")
    tasks = []
    for task_id, (name, regions) in enumerate(proposed.groupby("name", sort=True), start=1):
        width, height = int(image_of.at[name, "width"]), int(image_of.at[name, "height"])
        result = [_region(r.region, np.array([r.x1, r.y1, r.x2, r.y2]), r.label, width, height)
                  for r in regions.itertuples(index=False)]
        tasks.append({"id": task_id, "data": {"image": f"/data/local-files/?d={Path(image_of.at[name, 'path']).resolve()}",
                                              "name": name, "evidence": notes.get(name, "")},
                      "predictions": [{"model_version": "leukoflow-noisy", "result": result}]})
    (out_dir / "label_studio_tasks.json").write_text(json.dumps(tasks, indent=1))
    coco = coco_document(proposed, image_of)
    (out_dir / "coco.json").write_text(json.dumps(coco))
    check_coco(out_dir / "coco.json", len(coco["annotations"]))
    return {"review_tasks": len(tasks), "review_regions": int(len(proposed))}


def coco_document(proposed: pd.DataFrame, image_of: pd.DataFrame) -> dict[str, Any]:
    names = sorted(set(proposed["name"]))
    image_id = {name: k for k, name in enumerate(names, start=1)}
    widths = (proposed[XYXY[2]] - proposed[XYXY[0]]).to_numpy(float)
    heights = (proposed[XYXY[3]] - proposed[XYXY[1]]).to_numpy(float)
    return {
        "images": [{"id": image_id[n], "file_name": n, "width": int(image_of.at[n, "width"]),
                    "height": int(image_of.at[n, "height"])} for n in names],
        "categories": [{"id": k, "name": code} for k, code in enumerate(constants.CLASSES)],
        "annotations": [{"id": k, "image_id": image_id[r.name], "category_id": constants.CLASS_TO_INDEX[r.label],
                         "bbox": [float(r.x1), float(r.y1), float(w), float(h)], "area": float(w * h), "iscrowd": 0,
                         "region": r.region}
                        for k, (r, w, h) in enumerate(zip(proposed.itertuples(index=False), widths, heights), start=1)],
    }


def check_coco(path: Path, n_annotations: int) -> None:
    """Load the file with pycocotools (the COCO reference reader); error when it disagrees."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(path))
    if len(loaded.getAnnIds()) != n_annotations:
        raise ValueError(f"{path}: pycocotools reads {len(loaded.getAnnIds())} annotations, expected {n_annotations}")


# ----------------------------------------------------------------------------- import

def overrides_from_label_studio(tasks: list[dict[str, Any]], boxes: pd.DataFrame) -> pd.DataFrame:
    """REVIEW_OVERRIDES from a Label Studio JSON export (tasks without an annotation were not reviewed)."""
    records = []
    by_name = dict(tuple(boxes.groupby("name")))
    for task in tasks:
        if not task.get("annotations"):
            continue
        name = task["data"]["name"]
        current = by_name.get(name, boxes.iloc[:0]).set_index("row")
        seen = set()
        changed = False
        for region in task["annotations"][-1]["result"]:
            value, width, height = region["value"], region["original_width"], region["original_height"]
            box = [value["x"] * width / 100, value["y"] * height / 100, (value["x"] + value["width"]) * width / 100,
                   (value["y"] + value["height"]) * height / 100]
            label = value["rectanglelabels"][0]
            row = int(region["id"][3:]) if str(region["id"]).startswith("row") else -1
            if row not in current.index:
                records.append(_override(name, -1, "add_box", label, box, "reviewer added a cell"))
                changed = True
                continue
            seen.add(row)
            old = current.loc[row]
            moved = np.abs(np.array(box) - old[XYXY].to_numpy(float)).max() > MOVED_PX
            if moved or label != old["label"]:
                action = "set_box" if moved else "relabel"
                records.append(_override(name, row, action, label, box if moved else old[XYXY].tolist(),
                                         f"reviewer: {old['label']} -> {label}" if label != old["label"] else "reviewer moved the box"))
                changed = True
        for row in sorted(set(current.index) - seen):
            records.append(_override(name, row, "delete_box", current.at[row, "label"], current.loc[row, XYXY].tolist(),
                                     "reviewer deleted the box"))
            changed = True
        if not changed:
            records.append(_override(name, -1, "keep_image", "", [0.0] * 4, "reviewer kept the image as annotated"))
    frame = pd.DataFrame.from_records(records, columns=tables.REVIEW_OVERRIDES.column_names)
    return tables.schema_frame({c: frame[c] for c in frame.columns}, tables.REVIEW_OVERRIDES)


def _override(name: str, row: int, action: str, label: str, box: list[float], reason: str) -> dict[str, Any]:
    return {"name": name, "row": row, "action": action, "label": label, "x1": box[0], "y1": box[1], "x2": box[2],
            "y2": box[3], "reason": reason}


# ----------------------------------------------------------------------------- apply

def apply_overrides(boxes: pd.DataFrame, overrides: pd.DataFrame) -> tuple[pd.DataFrame, ledger.LedgerBuilder]:
    """Boxes after review, and one ledger line per override."""
    unknown = sorted(set(overrides["action"]) - set(ACTIONS))
    if unknown:
        raise ValueError(f"review overrides: unknown action(s) {unknown}; known: {ACTIONS}")
    result = boxes.set_index("row", drop=False).copy()
    book = ledger.LedgerBuilder()
    next_row = int(boxes["row"].max()) + 1 if len(boxes) else 0
    for item in overrides.itertuples(index=False):
        box = [item.x1, item.y1, item.x2, item.y2]
        if item.action == "add_box":
            result.loc[next_row] = {"row": next_row, "name": item.name, **dict(zip(XYXY, box)), "label": item.label,
                                    "class_idx": constants.CLASS_TO_INDEX[item.label], "clipped": False}
            book.add("review", "train.csv", next_row, item.name, "box", ledger.ACTION_REPAIRED, "review_add_box", item.reason)
            next_row += 1
        elif item.action == "delete_box":
            result = result.drop(index=item.row)
            book.add("review", "train.csv", item.row, item.name, "box", ledger.ACTION_REMOVED, "review_delete_box", item.reason)
        elif item.action in ("set_box", "relabel"):
            result.loc[item.row, XYXY] = box
            result.loc[item.row, ["label", "class_idx"]] = [item.label, constants.CLASS_TO_INDEX[item.label]]
            book.add("review", "train.csv", item.row, item.name, "box" if item.action == "set_box" else "class",
                     ledger.ACTION_REPAIRED, f"review_{item.action}", item.reason)
        else:
            book.add("review", "images", ledger.NO_ROW, item.name, "noisy_flag", ledger.ACTION_REPAIRED,
                     "review_keep_image", item.reason)
    reviewed = result.reset_index(drop=True).sort_values("row", kind="stable").reset_index(drop=True)
    return tables.schema_frame({c: reviewed[c] for c in reviewed.columns}, tables.CURATED_BOXES), book


def release_reviewed(flags: pd.DataFrame, overrides: pd.DataFrame) -> pd.DataFrame:
    """A reviewed image is no longer excluded: the reviewer's boxes replace the flagged ones."""
    return flags.assign(excluded=flags["excluded"] & ~flags["name"].isin(set(overrides["name"])))


def apply_review(*, curated_boxes: str, noisy: str, overrides: list[str], reviewed_boxes: str, reviewed_flags: str,
                 review_ledger: str) -> dict[str, Any]:
    """Rule entry: boxes and noisy flags after the reviewed overrides (`noisy.overrides`; none: unchanged)."""
    boxes = tables.read_table(curated_boxes, tables.CURATED_BOXES)
    flags = tables.read_table(noisy, tables.NOISY_FLAGS)
    reviewed = (tables.read_table(overrides[0], tables.REVIEW_OVERRIDES) if overrides
                else tables.empty_frame(tables.REVIEW_OVERRIDES))
    boxes_after, book = apply_overrides(boxes, reviewed)
    tables.write_table(boxes_after, reviewed_boxes, tables.CURATED_BOXES)
    tables.write_table(release_reviewed(flags, reviewed), reviewed_flags, tables.NOISY_FLAGS)
    tables.write_table(book.to_frame(), review_ledger, tables.LEDGER)
    return {"review_overrides": int(len(reviewed)), "review_actions": reviewed["action"].value_counts().to_dict()}


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    export = steps.add_parser("export", help="flagged items -> Label Studio tasks + COCO JSON")
    export.add_argument("--results", default="results", help="workflow results folder (default results)")
    export.add_argument("--out", required=True, help="folder for label_studio_tasks.json and coco.json")
    imported = steps.add_parser("import", help="Label Studio JSON export -> reviewed-overrides CSV")
    imported.add_argument("export_json", help="Label Studio JSON export of the reviewed tasks")
    imported.add_argument("--results", default="results", help="workflow results folder (default results)")
    imported.add_argument("--out", required=True, help="overrides CSV to write (name it in noisy.overrides)")


def run_command(args: argparse.Namespace) -> int:
    results = Path(args.results)
    boxes = tables.read_table(results / "curation" / "boxes.parquet", tables.CURATED_BOXES)
    if args.step == "export":
        label_path = results / "detection" / "label_flags.parquet"
        summary = export_review(
            tables.read_table(results / "detection" / "noisy_flags.parquet", tables.NOISY_FLAGS),
            tables.read_table(label_path, tables.LABEL_FLAGS) if label_path.exists() else tables.empty_frame(tables.LABEL_FLAGS),
            boxes, tables.read_table(results / "curation" / "images.parquet", tables.CURATED_IMAGES), args.out)
    else:
        overrides = overrides_from_label_studio(json.loads(Path(args.export_json).read_text()), boxes)
        tables.write_table(overrides, args.out, tables.REVIEW_OVERRIDES)
        summary = {"overrides": int(len(overrides)), "actions": overrides["action"].value_counts().to_dict()}
    print(json.dumps(summary))
    return 0
