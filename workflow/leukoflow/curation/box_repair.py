"""Box cleaning after de-duplication (docs/method.md §2.2).

As the winner did, every coordinate is clipped to [0, width-1] x [0, height-1] of the decoded
image. Unlike the winner, nothing is dropped silently: each usable input box of train.csv
ends in exactly one of three places, each with a ledger row when it is not kept as given:

* kept (possibly clipped: `clipped` True and a `repaired` ledger row naming the moved fields);
  the kept boxes of held-out test images (data.holdout_fraction) go to their own table, the
  answers `hold_out_test` writes, after exactly the same checks;
* quarantined: the input was inverted (`inverted_box`, x2 < x1 or y2 < y1), a coordinate is not
  finite (`non_finite_coordinate`), the box has no area once clipped (`degenerate_after_clip`,
  which covers boxes lying wholly outside the image), or its image is not usable
  (`image_unusable`);
* removed with its image, which de-duplication dropped (`image_removed_duplicate`, or
  `image_removed_conflicting_duplicate` under conflict_policy=drop_group).

Hence boxes_in == boxes_kept + boxes_held_out + boxes_quarantined + boxes_removed_with_image,
and boxes_clipped counts a subset of the kept and held-out boxes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.ledger import ledger_frame, usable
from leukoflow.tables import CURATED_BOXES, CURATED_IMAGES, INGEST_BOXES, LEDGER, read_table, schema_frame, write_table

COORDINATES = ("x1", "y1", "x2", "y2")
_REMOVAL_REASONS = {"removed": "image_removed_duplicate", "conflict_removed": "image_removed_conflicting_duplicate"}


def _attach_images(boxes: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    image_columns = images[["name", "split", "width", "height", "role", "keep"]]
    merged = boxes.merge(image_columns, on="name", how="left", validate="many_to_one")
    merged["known"] = merged["split"].isin(["train", "test"]).astype(bool)
    return merged


def _clip(frame: pd.DataFrame) -> pd.DataFrame:
    clipped = frame.copy()
    x_max = (frame["width"] - 1).to_numpy(dtype=float)
    y_max = (frame["height"] - 1).to_numpy(dtype=float)
    for column, upper in (("x1", x_max), ("x2", x_max), ("y1", y_max), ("y2", y_max)):
        clipped[column] = np.clip(frame[column].to_numpy(dtype=float), 0.0, upper)
    return clipped


def _fate(merged: pd.DataFrame, clipped: pd.DataFrame) -> pd.Series:
    """One reason code per box; '' means kept."""
    given = merged[list(COORDINATES)].to_numpy(dtype=float)
    fate = pd.Series("", index=merged.index, dtype="str")
    inverted = (given[:, 2] < given[:, 0]) | (given[:, 3] < given[:, 1])
    degenerate = (clipped["x2"] <= clipped["x1"]) | (clipped["y2"] <= clipped["y1"])
    removed = merged["known"] & ~merged["keep"].fillna(True).astype(bool)
    # Later assignments override earlier ones: a reason about the image beats one about coordinates.
    fate[degenerate.to_numpy()] = "degenerate_after_clip"
    fate[inverted] = "inverted_box"
    fate[~np.isfinite(given).all(axis=1)] = "non_finite_coordinate"
    fate[removed.to_numpy()] = merged.loc[removed, "role"].map(_REMOVAL_REASONS).fillna("image_removed_duplicate")
    fate[~merged["known"].to_numpy()] = "image_unusable"
    return fate


def _moved_fields(merged: pd.DataFrame, clipped: pd.DataFrame) -> pd.Series:
    """';'-joined names of the coordinates clipping changed ('' when none), per box."""
    moved = np.stack([merged[c].to_numpy(dtype=float) != clipped[c].to_numpy(dtype=float) for c in COORDINATES], axis=1)
    code = moved.astype(np.int64) @ (1 << np.arange(len(COORDINATES)))
    spelled = np.array([";".join(c for k, c in enumerate(COORDINATES) if bits >> k & 1) for bits in range(1 << len(COORDINATES))])
    return pd.Series(spelled[code], index=merged.index, dtype="str")


def _box_text(frame: pd.DataFrame, index: pd.Index) -> list[str]:
    part = frame.loc[index, list(COORDINATES)]
    return [f"({a:g}, {b:g}, {c:g}, {d:g})" for a, b, c, d in part.itertuples(index=False)]


def _repair_ledger(merged: pd.DataFrame, clipped: pd.DataFrame, fate: pd.Series, moved: pd.Series) -> pd.DataFrame:
    records = []
    dropped = fate.index[fate != ""]
    for idx, given, reason in zip(dropped, _box_text(merged, dropped), fate[dropped]):
        action = "removed" if reason.startswith("image_removed") else "quarantined"
        size = f" in {merged.at[idx, 'width']:g}x{merged.at[idx, 'height']:g}" if merged.at[idx, "known"] else ""
        records.append({"stage": "repair_boxes", "table": "train.csv", "row": int(merged.at[idx, "row"]),
                        "name": merged.at[idx, "name"], "field": "x1;y1;x2;y2", "action": action,
                        "reason": reason, "detail": f"box {given}{size}"})
    repaired = fate.index[(fate == "") & (moved != "")]
    for idx, given, after in zip(repaired, _box_text(merged, repaired), _box_text(clipped, repaired)):
        records.append({"stage": "repair_boxes", "table": "train.csv", "row": int(merged.at[idx, "row"]),
                        "name": merged.at[idx, "name"], "field": moved[idx], "action": "repaired",
                        "reason": "clipped_to_image",
                        "detail": f"{given} -> {after} in {merged.at[idx, 'width']:g}x{merged.at[idx, 'height']:g}"})
    ledger = ledger_frame(records)
    return ledger.sort_values(["row", "reason"], kind="stable").reset_index(drop=True)


def repair_box_table(boxes: pd.DataFrame, images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Clip the boxes of kept train and held-out images; quarantine or remove the rest, with reasons.

    Args:
        boxes: INGEST_BOXES frame; rows quarantined by ingest are left out (its ledger has them).
        images: CURATED_IMAGES frame from `deduplicate` (decoded sizes, split and keep flags).

    Returns:
        (CURATED_BOXES of kept train images, CURATED_BOXES of held-out test images, both sorted by
        row, LEDGER frame, summary dict).
    """
    started = time.perf_counter()
    merged = _attach_images(usable(boxes).reset_index(drop=True), images)
    clipped = _clip(merged)
    fate = _fate(merged, clipped)
    moved = _moved_fields(merged, clipped)
    kept = fate == ""
    clipped["clipped"] = kept & (moved != "")
    held_out = kept & merged["split"].eq("test")
    curated, held_out_boxes = (_box_frame(clipped[selected]) for selected in (kept & ~held_out, held_out))
    ledger = _repair_ledger(merged, clipped, fate, moved)
    removed = fate.str.startswith("image_removed")
    summary = {
        "boxes_quarantined_upstream": int(len(boxes) - len(merged)),
        "boxes_in": int(len(merged)),
        "boxes_kept": int((kept & ~held_out).sum()),
        "boxes_held_out": int(held_out.sum()),
        "boxes_clipped": int(clipped["clipped"].sum()),
        "images_with_clipped_boxes": int(clipped.loc[clipped["clipped"], "name"].nunique()),
        "boxes_quarantined": int((~kept & ~removed).sum()),
        "boxes_removed_with_image": int(removed.sum()),
        "quarantine_reasons": {k: int(v) for k, v in fate[~kept & ~removed].value_counts().sort_index().items()},
        "kept_train_images_without_boxes": int(
            (~images.loc[(images["split"] == "train") & images["keep"], "name"].isin(curated["name"])).sum()
        ),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return curated, held_out_boxes, ledger, summary


def _box_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.sort_values("row", kind="stable")
    return schema_frame({c: out[c] for c in CURATED_BOXES.column_names}, CURATED_BOXES)


def repair_boxes(*, ingest_boxes: str | Path, curated_images: str | Path, boxes: str | Path,
                 held_out_boxes: str | Path, ledger: str | Path) -> dict:
    """Rule `repair_boxes`: ingest's boxes and the curated images in; training boxes, held-out
    boxes (empty without a held-out split) and the ledger out."""
    kept, held_out, found_ledger, summary = repair_box_table(read_table(ingest_boxes, INGEST_BOXES),
                                                             read_table(curated_images, CURATED_IMAGES))
    write_table(kept, boxes, CURATED_BOXES)
    write_table(held_out, held_out_boxes, CURATED_BOXES)
    write_table(found_ledger, ledger, LEDGER)
    return summary
