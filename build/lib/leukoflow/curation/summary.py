"""Curation stage: de-duplication, box repair and folds in one entry, with one summary and ledger.

The rules run the three steps separately and call `summarize_from_files`; `curate` is the
same stage in one call (tests, benchmarks). It reads the ingest tables, runs `duplicates.deduplicate`, `box_repair.repair_boxes` and
`folds.make_folds`, and writes results/curation/{duplicate_groups, images, boxes, folds}.parquet,
fold_balance.csv/.png, ledger.csv and summary.json. `summarize` builds the summary; given the
synthetic generator's defects.parquet it also scores the duplicate search and the box repair:

* **dedup_recall**: share of defect pairs (`name` = the copy, `source` = the original; kinds
  exact_duplicate, near_duplicate, conflicting_duplicate, train_test_duplicate) whose two
  images fall in one duplicate group. Also given per kind.
* **dedup_precision**: the defect pairs are joined into "true clusters" (connected components,
  so two copies of one original belong together). Over every found group, each unordered
  member pair counts once; precision = pairs inside one true cluster / all member pairs
  (None when no group was found).
* **out_of_image_boxes_repaired**: share of out_of_image_box defect rows that the ledgers show
  clipped (repaired) or quarantined, among the rows not removed with a duplicate image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from leukoflow.curation.box_repair import repair_boxes
from leukoflow.curation.duplicates import deduplicate
from leukoflow.curation.folds import make_folds, plot_fold_balance
from leukoflow.tables import (
    CURATED_BOXES, CURATED_IMAGES, DEFECTS, DUPLICATE_GROUPS, FOLDS, INGEST_BOXES, INGEST_IMAGES, LEDGER,
    empty_frame, read_table, write_table,
)

DUPLICATE_DEFECT_KINDS = ("exact_duplicate", "near_duplicate", "conflicting_duplicate", "train_test_duplicate")
OUT_OF_IMAGE_DEFECT = "out_of_image_box"


# ---------------------------------------------------------------- scoring against defects.parquet

def _true_cluster_of(pairs: pd.DataFrame) -> pd.Series:
    """NAME -> id of its connected component in the graph of defect pairs."""
    codes, names = pd.factorize(pd.concat([pairs["name"], pairs["source"]], ignore_index=True))
    n_pairs = len(pairs)
    graph = coo_matrix((np.ones(n_pairs, np.int8), (codes[:n_pairs], codes[n_pairs:])), shape=(len(names),) * 2)
    _, component = connected_components(graph, directed=False)
    return pd.Series(component, index=names)


def _pair_count(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def dedup_scores(groups: pd.DataFrame, defects: pd.DataFrame) -> dict:
    """Recall and precision of the duplicate groups against the injected duplicate defects."""
    pairs = defects[defects["kind"].isin(DUPLICATE_DEFECT_KINDS)]
    group_of = groups.set_index("name")["group_id"]
    found = (pairs["name"].map(group_of) == pairs["source"].map(group_of)).fillna(False).astype(bool)
    scores: dict = {
        "dedup_defect_pairs": int(len(pairs)),
        "dedup_recall": round(float(found.mean()), 6) if len(pairs) else None,
        "dedup_recall_by_kind": {
            kind: round(float(found[pairs["kind"] == kind].mean()), 6)
            for kind in DUPLICATE_DEFECT_KINDS if (pairs["kind"] == kind).any()
        },
    }
    all_pairs = _pair_count(groups.groupby("group_id").size())
    if not all_pairs:
        scores["dedup_precision"] = None
        return scores
    cluster = groups["name"].map(_true_cluster_of(pairs)) if len(pairs) else pd.Series(np.nan, index=groups.index)
    linked = groups.assign(cluster=cluster).dropna(subset=["cluster"])
    true_pairs = _pair_count(linked.groupby(["group_id", "cluster"]).size())
    scores["dedup_precision"] = round(true_pairs / all_pairs, 6)
    scores["dedup_group_pairs"] = all_pairs
    return scores


def out_of_image_scores(ledger: pd.DataFrame, defects: pd.DataFrame) -> dict:
    """Share of out_of_image_box defect rows clipped or quarantined (rows gone with their image excluded)."""
    rows = defects.loc[defects["kind"] == OUT_OF_IMAGE_DEFECT, "row"]
    on_train = ledger[ledger["table"] == "train.csv"]
    handled = set(on_train.loc[on_train["action"].isin(["repaired", "quarantined"]), "row"])
    gone = set(on_train.loc[(on_train["stage"] == "repair_boxes") & (on_train["action"] == "removed"), "row"])
    judged = rows[~rows.isin(gone)]
    return {
        "out_of_image_box_defects": int(len(rows)),
        "out_of_image_boxes_removed_with_image": int(len(rows) - len(judged)),
        "out_of_image_boxes_repaired": round(float(judged.isin(handled).mean()), 6) if len(judged) else None,
    }


# ---------------------------------------------------------------- summary

def _ledger_counts(ledger: pd.DataFrame) -> dict[str, dict[str, int]]:
    counts = ledger.groupby(["stage", "action"]).size()
    nested: dict[str, dict[str, int]] = {}
    for (stage, action), count in counts.items():
        nested.setdefault(stage, {})[action] = int(count)
    return nested


def _accounting(dedup: dict, repair: dict, ledger: pd.DataFrame) -> dict:
    counts = _ledger_counts(ledger)
    dedup_rows = counts.get("deduplicate", {})
    repair_rows = counts.get("repair_boxes", {})
    return {
        "images_balance_ok": dedup["images_in"] == dedup["images_kept"] + dedup["images_removed"],
        "boxes_balance_ok": repair["boxes_in"]
        == repair["boxes_kept"] + repair["boxes_quarantined"] + repair["boxes_removed_with_image"],
        "ledger_matches_counts": (
            dedup_rows.get("removed", 0) == dedup["images_removed"]
            and repair_rows.get("removed", 0) == repair["boxes_removed_with_image"]
            and repair_rows.get("quarantined", 0) == repair["boxes_quarantined"]
            and repair_rows.get("repaired", 0) == repair["boxes_clipped"]
        ),
        "ledger_rows": counts,
    }


def summarize(
    dedup_summary: dict,
    repair_summary: dict,
    folds_summary: dict,
    ledgers: Sequence[pd.DataFrame],
    *,
    groups: pd.DataFrame | None = None,
    defects_path: str | Path | None = None,
) -> dict:
    """Content of results/curation/summary.json.

    Args:
        dedup_summary, repair_summary, folds_summary: the summaries of the three steps.
        ledgers: LEDGER frames of this stage (and, optionally, ingest's, for the defect check).
        groups: DUPLICATE_GROUPS frame; needed with `defects_path`.
        defects_path: the synthetic generator's defects.parquet, or None for real data.
    """
    ledger = pd.concat(list(ledgers), ignore_index=True) if ledgers else empty_frame(LEDGER)
    summary = {
        "images_in": dedup_summary["images_in"],
        "images_kept": dedup_summary["images_kept"],
        "images_removed": dedup_summary["images_removed"],
        "duplicate_groups": dedup_summary["duplicate_groups"],
        "conflicting_groups": dedup_summary["conflicting_groups"],
        "train_test_groups": dedup_summary["train_test_groups"],
        "boxes_in": repair_summary["boxes_in"],
        "boxes_kept": repair_summary["boxes_kept"],
        "boxes_clipped": repair_summary["boxes_clipped"],
        "boxes_quarantined": repair_summary["boxes_quarantined"],
        "boxes_removed_with_image": repair_summary["boxes_removed_with_image"],
        "fold_max_class_deviation": folds_summary["fold_max_class_deviation"],
        "fold_max_bin_deviation": folds_summary["fold_max_bin_deviation"],
        **_accounting(dedup_summary, repair_summary, ledger),
    }
    if defects_path is not None:
        if groups is None:
            raise ValueError("summarize: scoring against defects needs the duplicate groups frame")
        defects = read_table(defects_path, DEFECTS)
        summary.update(dedup_scores(groups, defects))
        summary.update(out_of_image_scores(ledger, defects))
    summary.update({"deduplicate": dedup_summary, "repair_boxes": repair_summary, "folds": folds_summary})
    return summary


def summarize_from_files(
    *,
    dedup_summary: str | Path,
    repair_summary: str | Path,
    folds_summary: str | Path,
    ledgers: Sequence[str | Path],
    ledger_out: str | Path,
    groups_path: str | Path | None = None,
    defects_path: str | Path | None = None,
) -> dict:
    """`summarize` on the step outputs as written by the rules; also writes the merged ledger.

    Args:
        dedup_summary, repair_summary, folds_summary: the steps' summary JSON files.
        ledgers: the steps' LEDGER CSV files, merged in the order given into `ledger_out`.
        ledger_out: merged LEDGER CSV to write.
        groups_path: duplicate_groups.parquet; required with `defects_path`.
        defects_path: the synthetic generator's defects.parquet, or None for real data.

    Raises:
        ValueError: `defects_path` given without `groups_path`.
    """
    if defects_path is not None and groups_path is None:
        raise ValueError("summarize_from_files: scoring against defects needs groups_path "
                         "(results/curation/duplicate_groups.parquet)")
    frames = [read_table(path, LEDGER) for path in ledgers]
    ledger = pd.concat(frames, ignore_index=True) if frames else empty_frame(LEDGER)
    write_table(ledger, ledger_out, LEDGER)
    steps = [json.loads(Path(path).read_text()) for path in (dedup_summary, repair_summary, folds_summary)]
    groups = read_table(groups_path, DUPLICATE_GROUPS) if groups_path is not None else None
    return summarize(*steps, [ledger], groups=groups, defects_path=defects_path)


# ---------------------------------------------------------------- stage entry

def curate(
    images_path: str | Path,
    boxes_path: str | Path,
    out_dir: str | Path,
    *,
    max_distance: int,
    conflict_policy: str,
    near_policy: str,
    n_folds: int,
    seed: int,
    bins: dict[str, int],
    defects_path: str | Path | None = None,
) -> dict:
    """Run the curation stage on the ingest tables and write its outputs under `out_dir`.

    Writes duplicate_groups.parquet, images.parquet, boxes.parquet, folds.parquet,
    fold_balance.csv, fold_balance.png, ledger.csv and summary.json; returns the summary.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    images = read_table(images_path, INGEST_IMAGES)
    boxes = read_table(boxes_path, INGEST_BOXES)
    groups, curated_images, dedup_ledger, dedup_summary = deduplicate(
        images, boxes, max_distance=max_distance, conflict_policy=conflict_policy, near_policy=near_policy
    )
    curated_boxes, repair_ledger, repair_summary = repair_boxes(boxes, curated_images)
    folds, balance, folds_summary = make_folds(curated_images, curated_boxes, n_folds=n_folds, seed=seed, bins=bins)
    ledger = pd.concat([dedup_ledger, repair_ledger], ignore_index=True)

    write_table(groups, out / "duplicate_groups.parquet", DUPLICATE_GROUPS)
    write_table(curated_images, out / "images.parquet", CURATED_IMAGES)
    write_table(curated_boxes, out / "boxes.parquet", CURATED_BOXES)
    write_table(folds, out / "folds.parquet", FOLDS)
    write_table(ledger, out / "ledger.csv", LEDGER)
    balance.to_csv(out / "fold_balance.csv", index=False)
    plot_fold_balance(balance, out / "fold_balance.png")

    summary = summarize(dedup_summary, repair_summary, folds_summary, [ledger], groups=groups,
                        defects_path=defects_path)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
