"""De-duplication of train and test images in two stages (docs/method.md §2.1, "Where we go further" 1).

The winner grouped images whose imagededup pHash strings were identical and dropped the last
file of each all-train group in glob order. We differ on purpose:

* **Two stages for near duplicates.** Candidates are pairs whose 64-bit pHashes differ by at
  most `max_distance` bits (a loose distance: on real centred-cell smears distinct fields also
  come close in an 8x8 DCT hash); each candidate is then confirmed by an independent comparison
  of the images themselves (`leukoflow.curation.confirm`: shift-tolerant normalised correlation
  of the thumbnails stored at ingest) reaching `min_similarity`. Only confirmed pairs link images.
  The exact path is unchanged: images with equal pHashes are always linked.
* **Groups** are the connected components of the links, so a chain A~B~C is one group even
  when A and C are far apart. Each member records the pHash distance and the similarity of its
  closest link. `max_distance=0` is the winner's rule.
* **Deterministic survivor.** Inside a group, train members are sorted by NAME and the first
  one survives. Re-ordering the input rows never changes the result.
* **Conflicting labels are reported.** When the train members' label multisets differ, the
  group is counted as conflicting; `conflict_policy="keep_survivor"` keeps the survivor (the
  winner's behaviour, made visible), `"drop_group"` drops every train member.
* **Train-test groups are reported.** Test images are always kept (role test_member); all
  members of a group spanning both splits are marked `train_test_duplicate`.
* **Held-out split by group.** For datasets without a test split (`holdout_fraction` > 0), whole
  groups are moved to the test split (`leukoflow.ingest.holdout.held_out`), so no group ever
  straddles training and the scored test set.
* **Ledger.** Every train image taken out of training gets a ledger row (reason
  exact_duplicate, near_duplicate or conflicting_duplicate).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from leukoflow.curation.confirm import similarity
from leukoflow.curation.hash_search import find_near_pairs, hamming, phash_to_uint64
from leukoflow.curation.neighbours import neighbour_pairs
from leukoflow.ingest.holdout import held_out
from leukoflow.ingest.thumbnails import ThumbnailArray, spill_thumbnails, thumbnails_to_array
from leukoflow.ledger import ledger_frame, usable, usable_rows
from leukoflow.tables import (
    CURATED_IMAGES, DUPLICATE_GROUPS, INGEST_BOXES, INGEST_IMAGES, LEDGER, read_table, schema_frame, write_table,
)

ConflictPolicy = Literal["keep_survivor", "drop_group"]
NearPolicy = Literal["remove", "keep_grouped"]
CONFLICT_POLICIES = ("keep_survivor", "drop_group")
NEAR_POLICIES = ("remove", "keep_grouped")


# ---------------------------------------------------------------- links and groups

def _exact_links(hashes: np.ndarray) -> np.ndarray:
    """(k, 2) image index pairs chaining the images that share a pHash (rows are sorted by name)."""
    order = np.argsort(hashes, kind="stable")
    same = hashes[order][1:] == hashes[order][:-1]
    return np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)


def _candidate_links(hashes: np.ndarray, thumbnails: ThumbnailArray, max_distance: int,
                     neighbours: int | None) -> np.ndarray:
    """(k, 2) pairs of representative images (first by name) of distinct hashes within max_distance
    bits: among each one's `neighbours` nearest thumbnail layouts, or among all pairs when None."""
    unique, first = np.unique(hashes, return_index=True)
    if neighbours is None:
        pairs = find_near_pairs(unique, max_distance)
    else:
        pairs = neighbour_pairs(thumbnails, first, neighbours,
                                keep=lambda a, b: hamming(unique[a], unique[b]) <= max_distance)
    return first[pairs].reshape(-1, 2).astype(np.int64)


@dataclass(frozen=True)
class Links:
    """Accepted image links with their pHash distance and thumbnail similarity, and the counts."""

    pairs: np.ndarray  # (k, 2) image indices
    distance: np.ndarray  # (k,) bits
    similarity: np.ndarray  # (k,)
    candidates: int
    confirmed: int


def find_links(hashes: np.ndarray, thumbnails: ThumbnailArray, *, max_distance: int, min_similarity: float,
               neighbours: int | None) -> Links:
    """Exact links (equal hashes) and confirmed near links (hash candidates passing the comparison)."""
    exact = _exact_links(hashes)
    candidates = _candidate_links(hashes, thumbnails, max_distance, neighbours)
    pairs = np.concatenate([exact, candidates])
    scores = similarity(thumbnails, pairs[:, 0], pairs[:, 1])
    confirmed = scores[len(exact):] >= min_similarity
    keep = np.concatenate([np.ones(len(exact), bool), confirmed])
    return Links(pairs[keep], hamming(hashes[pairs[keep, 0]], hashes[pairs[keep, 1]]).astype(np.int64),
                 scores[keep], int(len(candidates)), int(confirmed.sum()))


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label per image of the link graph."""
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def closest_link(n: int, links: Links) -> tuple[np.ndarray, np.ndarray]:
    """Per image: smallest pHash distance and largest similarity over its links (-1, NaN when none)."""
    distance = np.full(n, np.iinfo(np.int64).max)
    score = np.full(n, -np.inf)
    for column in (0, 1):
        np.minimum.at(distance, links.pairs[:, column], links.distance)
        np.maximum.at(score, links.pairs[:, column], links.similarity)
    linked = np.isfinite(score)
    return np.where(linked, distance, -1), np.where(linked, score, np.nan)

# ---------------------------------------------------------------- roles inside groups

def label_multisets(boxes: pd.DataFrame) -> pd.Series:
    """NAME -> '|'-joined sorted class codes of its usable boxes (repeats kept)."""
    ok = usable(boxes)
    multisets = ok.groupby("name")["label"].agg(lambda labels: "|".join(sorted(labels)))
    return pd.Series(multisets, dtype="str")


def _group_ids(names: pd.Series, component: np.ndarray) -> np.ndarray:
    """-1 for singletons, else 0-based ids ordered by the group's smallest NAME (names are sorted)."""
    sizes = np.bincount(component)
    grouped = sizes[component] > 1
    first_seen = pd.unique(component[grouped])
    renumber = np.full(len(sizes), -1, np.int64)
    renumber[first_seen] = np.arange(len(first_seen))
    return renumber[component]


def _assign_group_roles(
    names: list[str], splits: list[str], labels: list[str], hashes: list[int],
    conflict_policy: ConflictPolicy, near_policy: NearPolicy,
) -> tuple[list[str], list[str], bool]:
    """Role and reason per member (members sorted by name) and whether the train labels conflict."""
    train_rows = [k for k, split in enumerate(splits) if split == "train"]
    conflict = len({labels[k] for k in train_rows if labels[k]}) > 1
    roles = ["test_member"] * len(names)
    reasons = ["test images are always kept"] * len(names)
    if not train_rows:
        return roles, reasons, conflict
    if conflict and conflict_policy == "drop_group":
        for k in train_rows:
            roles[k], reasons[k] = "conflict_removed", "conflicting labels in the group (conflict_policy=drop_group)"
        return roles, reasons, conflict
    survivor = train_rows[0]
    kept_hashes: set[int] = set()
    for k in train_rows:
        keeps_as_own_cluster = near_policy == "keep_grouped" and not conflict and hashes[k] not in kept_hashes
        if k == survivor or keeps_as_own_cluster:
            kept_hashes.add(hashes[k])
            roles[k] = "survivor"
            reasons[k] = "first train member by NAME" + (
                " of its exact-hash cluster (near_policy=keep_grouped)" if k != survivor else ""
            ) + ("; labels conflict, kept by conflict_policy=keep_survivor" if conflict else "")
            continue
        distance = (hashes[k] ^ hashes[survivor]).bit_count()
        roles[k] = "removed"
        kind = "exact" if distance == 0 else "near"
        reasons[k] = f"{kind} duplicate of {names[survivor]} (pHash distance {distance})"
        reasons[k] += "; conflicting labels" if conflict else ""
    return roles, reasons, conflict


def _roles_by_group(
    table: pd.DataFrame, hashes: list[int], conflict_policy: ConflictPolicy, near_policy: NearPolicy
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Role, reason, group kind and train-test mark per image, and the number of conflicting groups."""
    roles = np.full(len(table), "unique", dtype=object)
    reasons = np.full(len(table), "", dtype=object)
    kinds = np.full(len(table), "", dtype=object)
    train_test = np.zeros(len(table), bool)
    conflicting_groups = 0
    in_group = table["group_id"] >= 0
    columns = {c: table[c].tolist() for c in ("name", "split", "labels")}
    for _, rows in table.index[in_group].to_series().groupby(table.loc[in_group, "group_id"], sort=True):
        rows = rows.to_numpy()
        member_hashes = [hashes[r] for r in rows]
        member_roles, member_reasons, conflict = _assign_group_roles(
            *([columns[c][r] for r in rows] for c in ("name", "split", "labels")), member_hashes,
            conflict_policy, near_policy,
        )
        conflicting_groups += int(conflict)
        roles[rows] = member_roles
        reasons[rows] = member_reasons
        kinds[rows] = "exact" if len(set(member_hashes)) == 1 else "near"
        train_test[rows] = len({columns["split"][r] for r in rows}) > 1
    return roles, reasons, kinds, train_test, conflicting_groups



# ---------------------------------------------------------------- the search

def usable_by_name(images: pd.DataFrame) -> pd.DataFrame:
    """The usable images sorted by NAME, indexed by their row position in `images`, without thumbnails."""
    table = images.drop(columns="thumbnail", errors="ignore").reset_index(drop=True)
    rows = usable_rows(table)
    return table.take(rows[np.argsort(table["name"].to_numpy()[rows], kind="stable")])  # one copy of the rows


def _check_options(max_distance: int, min_similarity: float, conflict_policy: str, near_policy: str,
                   neighbours: int | None) -> None:
    if neighbours is not None and neighbours < 1:
        raise ValueError(f"dedup neighbours must be at least 1 (or null for every pair), got {neighbours}")
    if conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"dedup conflict_policy must be one of {CONFLICT_POLICIES}, got {conflict_policy!r}")
    if near_policy not in NEAR_POLICIES:
        raise ValueError(f"dedup near_policy must be one of {NEAR_POLICIES}, got {near_policy!r}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"dedup min_similarity must be in [-1, 1], got {min_similarity}")


def _hold_out(table: pd.DataFrame, holdout_fraction: float, seed: int) -> None:
    """Move whole groups (and single images) to the test split, in place."""
    if holdout_fraction <= 0:
        return
    if (table["split"] == "test").any():
        raise ValueError("deduplicate: data.holdout_fraction > 0 but the images table already has test images; "
                         "a held-out split is only drawn from a dataset without a test split")
    units = table["name"].where(table["group_id"] < 0, "group " + table["group_id"].astype("str"))
    table.loc[held_out(units, fraction=holdout_fraction, seed=seed), "split"] = "test"


def find_duplicates(
    images: pd.DataFrame, boxes: pd.DataFrame, *, max_distance: int, min_similarity: float,
    conflict_policy: ConflictPolicy, near_policy: NearPolicy, holdout_fraction: float, seed: int,
    neighbours: int | None, thumbnails: ThumbnailArray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Group exact and confirmed near-duplicate images and decide which train copies are used.

    Args:
        images: INGEST_IMAGES frame; quarantined images are left out (ingest's ledger has them).
        boxes: INGEST_BOXES frame; usable boxes give each train image its label multiset.
        max_distance: loose pHash Hamming distance that makes two images a candidate pair.
        neighbours: a candidate pair must also be among either image's `neighbours` nearest
            thumbnail layouts (`leukoflow.curation.neighbours`); None searches every pair.
        thumbnails: the usable images' thumbnails in `usable_by_name` order, when the caller read
            them itself (`spill_thumbnails`); None decodes them from images["thumbnail"].
        min_similarity: thumbnail correlation a candidate needs to be linked (-1 links every candidate).
        conflict_policy: "keep_survivor" or "drop_group" for groups whose train labels differ.
        near_policy: "remove" keeps one train image per group; "keep_grouped" keeps one per
            distinct hash of a conflict-free group (the folds then keep the group together).
        holdout_fraction: share of the images moved, whole groups at a time, to a test split (0: none).
        seed: seed of the held-out draw.

    Returns:
        (DUPLICATE_GROUPS frame, CURATED_IMAGES frame, LEDGER frame, summary dict).
    """
    _check_options(max_distance, min_similarity, conflict_policy, near_policy, neighbours)
    started = time.perf_counter()
    table = usable_by_name(images)
    if thumbnails is None:
        thumbnails = thumbnails_to_array(images["thumbnail"].array, table.index.to_numpy())  # index = row position
    elif len(thumbnails) != len(table):
        raise ValueError(f"deduplicate: {len(thumbnails)} thumbnails for {len(table)} usable images")
    table = table.reset_index(drop=True)
    if table["name"].duplicated().any():
        raise ValueError(f"images table: NAME {table['name'][table['name'].duplicated()].iloc[0]!r} appears twice")
    hashes = phash_to_uint64(table["phash"], table["name"])
    links = find_links(hashes, thumbnails, max_distance=max_distance, min_similarity=min_similarity,
                       neighbours=neighbours)
    table["group_id"] = _group_ids(table["name"], components(len(table), links.pairs))
    table["hash_distance"], table["similarity"] = closest_link(len(table), links)
    _hold_out(table, holdout_fraction, seed)
    in_group = table["group_id"] >= 0
    labels = label_multisets(boxes[boxes["name"].isin(table.loc[in_group, "name"])])
    table["labels"] = table["name"].map(labels).astype("str").fillna("").where(table["split"] == "train", "")

    roles, reasons, kinds, train_test, conflicting_groups = _roles_by_group(
        table, [int(h) for h in hashes], conflict_policy, near_policy
    )
    table["role"] = pd.Series(roles, dtype="str")
    table["reason"] = pd.Series(reasons, dtype="str")
    table["kind"] = pd.Series(kinds, dtype="str")
    table["train_test_duplicate"] = train_test
    table["keep"] = ~table["role"].isin(["removed", "conflict_removed"])

    groups = _groups_frame(table)
    curated = schema_frame({c: table[c] for c in CURATED_IMAGES.column_names}, CURATED_IMAGES)
    ledger = _dedup_ledger(table)
    summary = _dedup_summary(images, table, groups, conflicting_groups, links, max_distance, min_similarity,
                             conflict_policy, near_policy)
    summary["neighbours"] = neighbours
    summary["holdout_fraction"] = float(holdout_fraction)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return groups, curated, ledger, summary


# Columns of ingest's images table that dedup never reads: the thumbnails' hex text (read batch by
# batch instead) and 120 B per image of text the curated table does not carry.
_NOT_READ = ("thumbnail", "reason", "channels", "mode", "file_sha256")


def deduplicate(
    *, ingest_images: str | Path, ingest_boxes: str | Path, groups: str | Path, images: str | Path,
    ledger: str | Path, max_distance: int, min_similarity: float, conflict_policy: ConflictPolicy,
    near_policy: NearPolicy, holdout_fraction: float, seed: int, neighbours: int | None,
) -> dict:
    """Rule `deduplicate`: ingest's images and boxes in; duplicate groups, curated images, ledger out."""
    # The thumbnails' hex text is never read as a column: each batch is decoded straight to uint8,
    # into a temporary file beside the outputs that the search reads pair by pair (`ThumbnailFile`).
    ingested = read_table(ingest_images, INGEST_IMAGES, skip=_NOT_READ)
    folder = Path(groups).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder, prefix="thumbnails-", buffering=0) as spill:
        thumbnails = spill_thumbnails(ingest_images, usable_by_name(ingested).index.to_numpy(), spill)
        found_groups, curated, found_ledger, summary = find_duplicates(
            ingested, read_table(ingest_boxes, INGEST_BOXES),
            max_distance=max_distance, min_similarity=min_similarity, conflict_policy=conflict_policy,
            near_policy=near_policy, holdout_fraction=holdout_fraction, seed=seed, neighbours=neighbours,
            thumbnails=thumbnails,
        )
    write_table(found_groups, groups, DUPLICATE_GROUPS)
    write_table(curated, images, CURATED_IMAGES)
    write_table(found_ledger, ledger, LEDGER)
    return summary


def _groups_frame(table: pd.DataFrame) -> pd.DataFrame:
    members = table[table["group_id"] >= 0].sort_values(["group_id", "name"], kind="stable")
    return schema_frame({c: members[c] for c in DUPLICATE_GROUPS.column_names}, DUPLICATE_GROUPS)


def _dedup_ledger(table: pd.DataFrame) -> pd.DataFrame:
    dropped = table[~table["keep"]]
    reason_codes = np.where(
        dropped["role"] == "conflict_removed", "conflicting_duplicate",
        np.where(dropped["reason"].str.startswith("exact"), "exact_duplicate", "near_duplicate"),
    )
    records = [
        {"stage": "deduplicate", "table": "images", "row": -1, "name": name, "field": "phash",
         "action": "removed", "reason": code, "detail": f"group {group_id}: {reason}"}
        for name, group_id, reason, code in zip(dropped["name"], dropped["group_id"], dropped["reason"], reason_codes)
    ]
    return ledger_frame(records)


def _dedup_summary(
    images: pd.DataFrame, table: pd.DataFrame, groups: pd.DataFrame, conflicting_groups: int, links: Links,
    max_distance: int, min_similarity: float, conflict_policy: str, near_policy: str,
) -> dict:
    per_group = groups.groupby("group_id").agg(kind=("kind", "first"), splits=("split", "nunique"))
    return {
        "max_distance": int(max_distance),
        "min_similarity": float(min_similarity),
        "conflict_policy": conflict_policy,
        "near_policy": near_policy,
        "candidate_pairs": links.candidates,
        "confirmed_pairs": links.confirmed,
        "rejected_pairs": links.candidates - links.confirmed,
        "images_quarantined_upstream": int(len(images) - len(table)),
        "images_in": int(len(table)),
        "images_kept": int(table["keep"].sum()),
        "images_removed": int((~table["keep"]).sum()),
        "train_images_kept": int((table["keep"] & (table["split"] == "train")).sum()),
        "test_images_kept": int((table["keep"] & (table["split"] == "test")).sum()),
        "duplicate_groups": int(len(per_group)),
        "exact_groups": int((per_group["kind"] == "exact").sum()),
        "near_groups": int((per_group["kind"] == "near").sum()),
        "images_in_groups": int(len(groups)),
        "conflicting_groups": int(conflicting_groups),
        "train_test_groups": int((per_group["splits"] > 1).sum()),
    }
