"""Curation summary: one results/curation/summary.json and one merged ledger (rule `summarize_curation`).

`summarize` joins the summaries of deduplicate, repair_boxes and make_folds and checks their
accounting against the ledgers. Given the synthetic generator's defects.parquet it also scores the
duplicate search and the box repair:

* **dedup_recall**: share of defect pairs (`name` = the copy, `source` = the original; every
  duplicate kind of `DUPLICATE_DEFECT_KINDS`) whose two images fall in one duplicate group;
  also per kind (`dedup_recall_by_kind`).
* **dedup_precision**: the defect pairs are joined into "true clusters" (connected components,
  so two copies of one original belong together). Over every found group, each unordered member
  pair counts once; precision = pairs inside one true cluster / all member pairs (None when no
  group was found). Per kind (`dedup_precision_by_kind`): the same over the member pairs that
  involve a copy of that kind.
* **hard negatives** (`similar_smear`: a distinct smear drawn from the same plan as its source,
  same classes, sizes and layout): `hard_negative_pairs` and how many ended in one group
  (`hard_negatives_grouped`, ideally 0).
* **out_of_image_boxes_repaired**: share of out_of_image_box defect rows that the ledgers show
  clipped (repaired) or quarantined, among the rows not removed with a duplicate image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from leukoflow.tables import DEFECTS, DUPLICATE_GROUPS, LEDGER, empty_frame, read_table, write_table

DUPLICATE_DEFECT_KINDS = (
    "exact_duplicate", "near_duplicate", "conflicting_duplicate", "train_test_duplicate",
    "shifted_duplicate", "refocused_duplicate", "recoloured_duplicate",
)
HARD_NEGATIVE_KIND = "similar_smear"
OUT_OF_IMAGE_DEFECT = "out_of_image_box"


# ---------------------------------------------------------------- scoring against defects.parquet

def _true_cluster_of(pairs: pd.DataFrame) -> pd.Series:
    """NAME -> id of its connected component in the graph of defect pairs."""
    codes, names = pd.factorize(pd.concat([pairs["name"], pairs["source"]], ignore_index=True))
    n_pairs = len(pairs)
    graph = coo_matrix((np.ones(n_pairs, np.int8), (codes[:n_pairs], codes[n_pairs:])), shape=(len(names),) * 2)
    _, component = connected_components(graph, directed=False)
    return pd.Series(component, index=names)


def _pairs(n):
    return n * (n - 1) // 2


def _pairs_touching(groups: pd.DataFrame, cluster: pd.Series, marked: np.ndarray) -> tuple[int, int]:
    """Member pairs of the found groups with at least one `marked` member, and how many of them lie
    in one true cluster; counted per group and cluster, never listed (a loose search can make one
    group of most of 69k images, whose pairs would not fit in memory)."""
    members = pd.DataFrame({"group": groups["group_id"].to_numpy(), "cluster": groups["name"].map(cluster).to_numpy(),
                            "marked": marked.astype(np.int64)})

    def touching(keys: list[str]) -> int:
        cells = members.dropna(subset=keys).groupby(keys)["marked"].agg(["size", "sum"])
        return int((_pairs(cells["size"]) - _pairs(cells["size"] - cells["sum"])).sum())

    return touching(["group"]), touching(["group", "cluster"])


def _ratio(part: int | float, whole: int | float) -> float | None:
    return round(float(part) / float(whole), 6) if whole else None


def dedup_scores(groups: pd.DataFrame, defects: pd.DataFrame) -> dict:
    """Recall and precision of the duplicate groups against the injected duplicates, overall and per kind."""
    pairs = defects[defects["kind"].isin(DUPLICATE_DEFECT_KINDS)]
    group_of = groups.set_index("name")["group_id"]
    found = (pairs["name"].map(group_of) == pairs["source"].map(group_of)).fillna(False).astype(bool)
    kinds = [kind for kind in DUPLICATE_DEFECT_KINDS if (pairs["kind"] == kind).any()]
    cluster = _true_cluster_of(pairs) if len(pairs) else pd.Series(dtype="int64")
    group_pairs, true_pairs = _pairs_touching(groups, cluster, np.ones(len(groups), bool))
    by_kind = {kind: _pairs_touching(groups, cluster, groups["name"].isin(pairs.loc[pairs["kind"] == kind, "name"])
                                     .to_numpy()) for kind in kinds}
    negatives = defects[defects["kind"] == HARD_NEGATIVE_KIND]
    negatives_grouped = (negatives["name"].map(group_of) == negatives["source"].map(group_of)).fillna(False)
    return {
        "dedup_defect_pairs": int(len(pairs)),
        "dedup_recall": _ratio(found.sum(), len(pairs)),
        "dedup_recall_by_kind": {kind: _ratio(found[pairs["kind"] == kind].sum(), (pairs["kind"] == kind).sum())
                                 for kind in kinds},
        "dedup_precision": _ratio(true_pairs, group_pairs),
        "dedup_precision_by_kind": {kind: _ratio(true, touching) for kind, (touching, true) in by_kind.items()},
        "dedup_group_pairs": group_pairs,
        "hard_negative_pairs": int(len(negatives)),
        "hard_negatives_grouped": int(negatives_grouped.astype(bool).sum()),
    }


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
        "boxes_balance_ok": repair["boxes_in"] == repair["boxes_kept"] + repair["boxes_held_out"]
        + repair["boxes_quarantined"] + repair["boxes_removed_with_image"],
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
        "boxes_held_out": repair_summary["boxes_held_out"],
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


def summarize_curation(*, dedup_summary: str | Path, repair_summary: str | Path, folds_summary: str | Path,
                       groups: str | Path, dedup_ledger: str | Path, repair_ledger: str | Path,
                       defect_table: Sequence[str | Path], ledger: str | Path) -> dict:
    """Rule `summarize_curation`: the steps' summaries and ledgers in; the merged ledger out.

    Args:
        dedup_summary, repair_summary, folds_summary: the steps' summary JSON files.
        groups: duplicate_groups.parquet.
        dedup_ledger, repair_ledger: the steps' LEDGER CSV files, merged in this order into `ledger`.
        defect_table: the synthetic generator's defects.parquet as a one-element list, or empty for real data.
        ledger: merged LEDGER CSV to write.
    """
    merged = pd.concat([read_table(path, LEDGER) for path in (dedup_ledger, repair_ledger)], ignore_index=True)
    write_table(merged, ledger, LEDGER)
    steps = [json.loads(Path(path).read_text()) for path in (dedup_summary, repair_summary, folds_summary)]
    defects_path = defect_table[0] if defect_table else None
    return summarize(*steps, [merged], groups=read_table(groups, DUPLICATE_GROUPS), defects_path=defects_path)
