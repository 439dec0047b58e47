"""Report items of the data stages: the dataset overview, the data-quality ledger, duplicate groups.

Rule entries (paths in, summary out): `plot_dataset_overview`, `tabulate_ledger`,
`plot_duplicate_examples`. Every sampling takes a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from leukoflow import tables
from leukoflow.constants import CLASSES
from leukoflow.report.pages import save_figure, write_html


# ----------------------------------------------------------------------------- dataset overview

def class_distribution(boxes: pd.DataFrame) -> pd.Series:
    """Annotated cells per class code (INGEST_BOXES rows not quarantined), in CLASSES order."""
    usable = boxes[boxes["status"] != "quarantined"]
    return usable["label"].value_counts().reindex(list(CLASSES), fill_value=0).rename("cells")


def cells_per_image(names: pd.Series) -> pd.Series:
    """How many images have k cells: index k, value images (one `names` entry per cell)."""
    counts = names.value_counts()
    return counts.value_counts().sort_index().rename("images")


def draw_dataset_overview(images: pd.DataFrame, boxes: pd.DataFrame, test: pd.DataFrame, path: str | Path) -> None:
    """Class distribution, cells per image (train annotations, test.csv rows) and image sizes."""
    from matplotlib.figure import Figure  # here: the table entries of this module need no matplotlib

    figure = Figure(figsize=(14, 4.2), layout="constrained")
    by_class, per_image, sizes = figure.subplots(1, 3, width_ratios=(2.2, 1, 1))
    classes = class_distribution(boxes)
    by_class.bar(classes.index, classes.to_numpy(), color="tab:blue")
    by_class.set_xticks(range(len(classes)), classes.index, rotation=70, fontsize=8)
    by_class.set_ylabel("annotated cells")
    by_class.set_title(f"class distribution ({int(classes.sum())} train cells)", fontsize=10)
    usable_boxes = boxes[boxes["status"] != "quarantined"]
    usable_test = test[test["status"] != "quarantined"]
    for offset, (label, names) in enumerate((("train", usable_boxes["name"]), ("test", usable_test["name"]))):
        counts = cells_per_image(names)
        per_image.bar(counts.index + (offset - 0.5) * 0.4, counts.to_numpy(), 0.4, label=label)
    per_image.set_xlabel("cells per image")
    per_image.set_ylabel("images")
    per_image.set_title("cells per image", fontsize=10)
    per_image.legend(fontsize=8)
    decoded = images[images["width"] > 0]
    for split, rows in decoded.groupby("split"):
        sizes.scatter(rows["width"], rows["height"], s=10, alpha=0.6, label=f"{split} ({len(rows)})")
    sizes.set_xlabel("width (px)")
    sizes.set_ylabel("height (px)")
    sizes.set_title(f"image sizes ({len(images) - len(decoded)} undecodable)", fontsize=10)
    sizes.legend(fontsize=8)
    save_figure(figure, path)


# ----------------------------------------------------------------------------- data-quality ledger

def ledger_summary(ledgers: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Entries and images per (stage, table, action, reason) over the stages' LEDGERs, most frequent first."""
    columns = ["stage", "table", "action", "reason"]
    frames = [frame for frame in ledgers if len(frame)]
    if not frames:
        return pd.DataFrame({**{c: pd.Series([], dtype=str) for c in columns}, "entries": pd.Series([], dtype="int64"),
                             "images": pd.Series([], dtype="int64")})
    ledger = pd.concat(frames, ignore_index=True).drop_duplicates()
    summary = ledger.groupby(columns, sort=False).agg(entries=("row", "size"), images=("name", "nunique")).reset_index()
    order = {stage: k for k, stage in enumerate(dict.fromkeys(ledger["stage"]))}
    summary = summary.assign(_order=summary["stage"].map(order))
    summary = summary.sort_values(["_order", "entries", "reason"], ascending=[True, False, True], kind="stable")
    return summary.drop(columns="_order").reset_index(drop=True)


# ----------------------------------------------------------------------------- duplicate groups

def duplicate_examples(groups: pd.DataFrame, n_groups: int, seed: int) -> pd.DataFrame:
    """Members of up to `n_groups` duplicate groups, drawn with `seed`, one group of each kind first.

    Groups of both kinds (exact, near) and a train/test one are shown when they exist, so that a
    small sample still shows every kind of finding.
    """
    if not len(groups) or n_groups <= 0:
        return groups.iloc[:0]
    rng = np.random.default_rng(seed)
    per_group = groups.groupby("group_id").agg(kind=("kind", "first"), test=("split", lambda s: (s == "test").any()))
    ids = list(per_group.index)
    shuffled = [ids[k] for k in rng.permutation(len(ids))]
    first_of = [next((g for g in shuffled if mask.loc[g]), None)
                for mask in (per_group["kind"] == "exact", per_group["kind"] == "near", per_group["test"])]
    chosen = list(dict.fromkeys([g for g in first_of if g is not None] + shuffled))[:n_groups]
    members = groups[groups["group_id"].isin(chosen)]
    return members.sort_values(["group_id", "name"], kind="stable").reset_index(drop=True)


def draw_duplicate_examples(examples: pd.DataFrame, paths: Mapping[str, str], path: str | Path, *,
                            tile_px: int) -> None:
    """One row per group: thumbnails of its members titled with name, split and role."""
    grouped = list(examples.groupby("group_id", sort=True))
    n_rows, n_cols = max(1, len(grouped)), max([len(rows) for _, rows in grouped], default=1)
    inches = tile_px / 50
    from matplotlib.figure import Figure  # here: the table entries of this module need no matplotlib

    figure = Figure(figsize=(max(4.0, n_cols * inches), max(2.0, n_rows * (inches + 0.5))), layout="constrained")
    axes = np.atleast_2d(figure.subplots(n_rows, n_cols, squeeze=False))
    for axis in axes.ravel():
        axis.set_axis_off()
    if not grouped:
        axes[0, 0].text(0.5, 0.5, "no duplicate groups found", ha="center", va="center")
    for row, (group_id, members) in enumerate(grouped):
        for col, member in enumerate(members.itertuples(index=False)):
            axis = axes[row, col]
            axis.imshow(_thumbnail(paths.get(member.name), tile_px))
            axis.set_title(f"group {group_id} ({member.kind})\n{member.name}\n{member.split}: {member.role}",
                           fontsize=7)
    save_figure(figure, path)


def _thumbnail(path: str | None, tile_px: int) -> np.ndarray:
    """RGB thumbnail of an image file; a grey tile when the file is missing or unreadable."""
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except (OSError, TypeError, AttributeError):
        return np.full((tile_px, tile_px, 3), 200, dtype=np.uint8)
    image.thumbnail((tile_px, tile_px))
    return np.asarray(image)


# ----------------------------------------------------------------------------- rule entries

def plot_dataset_overview(*, images: str, boxes: str, test: str, plot: str) -> dict[str, Any]:
    """Rule entry: the dataset overview figure from the ingest tables."""
    box_table = tables.read_table(boxes, tables.INGEST_BOXES)
    draw_dataset_overview(tables.read_table(images, tables.INGEST_IMAGES), box_table,
                          tables.read_table(test, tables.INGEST_TEST), plot)
    return {"classes_present": int((class_distribution(box_table) > 0).sum())}


def tabulate_ledger(*, ledgers: Sequence[str], table: str) -> dict[str, Any]:
    """Rule entry: the data-quality ledger summary (every stage's ledger.csv) as an HTML table."""
    summary = ledger_summary([tables.read_table(path, tables.LEDGER) for path in ledgers])
    write_html({"ledger entries per stage, action and reason": summary}, table, "Data-quality ledger")
    return {"ledger_entries": int(summary["entries"].sum())}


def plot_duplicate_examples(*, groups: str, images: str, plot: str, n_groups: int, seed: int,
                            tile_px: int) -> dict[str, Any]:
    """Rule entry: the montage of duplicate-group examples (image paths from the ingest table)."""
    examples = duplicate_examples(tables.read_table(groups, tables.DUPLICATE_GROUPS), n_groups, seed)
    paths = tables.read_table(images, tables.INGEST_IMAGES).set_index("name")["path"].to_dict()
    draw_duplicate_examples(examples, paths, plot, tile_px=tile_px)
    return {"groups_shown": int(examples["group_id"].nunique())}
