"""De-duplication of train and test images by perceptual hash (METHOD.md §2.1, "Where we go further" 1).

The winner grouped images whose imagededup pHash strings were identical and dropped the last
file of each all-train group in glob order. We differ on purpose:

* **Deterministic survivor.** Inside a group, train members are sorted by NAME and the first
  one survives. Re-ordering the input rows never changes the result; the survivors may differ
  from the winner's (his choice followed the file system's order).
* **Near duplicates.** Two images are linked when the Hamming distance of their 64-bit pHashes
  is at most `max_distance`; groups are the connected components of those links, so a chain
  A~B~C is one group even when A and C are far apart. `max_distance=0` is the winner's rule.
* **Conflicting labels are reported.** When the train members' label multisets differ, the
  group is counted as conflicting; `conflict_policy="keep_survivor"` keeps the survivor (the
  winner's behaviour, made visible), `"drop_group"` drops every train member.
* **Train-test groups are reported.** Test images are always kept (role test_member); all
  members of a group spanning both splits are marked `train_test_duplicate`. The winner left
  such groups untouched; we apply the survivor rule to their train members as to any group.
* **Ledger.** Every train image taken out of training gets a ledger row (reason
  exact_duplicate, near_duplicate or conflicting_duplicate). A group kept whole, a conflict
  resolved by keep_survivor, and a train-test link are visible in duplicate_groups.parquet.

Near pairs are found without an all-pairs Python loop: multi-index hashing splits the 64 bits
into `max_distance + 1` chunks, so by the pigeonhole principle every pair within the distance
agrees exactly on at least one chunk; candidates from equal chunks are verified with a
vectorised popcount (`np.bitwise_count`). When the chunks are too short to be selective, a
blocked vectorised XOR+popcount over the upper triangle is used instead; both give the same pairs.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from leukoflow.ledger import LedgerBuilder
from leukoflow.tables import CURATED_IMAGES, DUPLICATE_GROUPS, LEDGER, schema_frame

ConflictPolicy = Literal["keep_survivor", "drop_group"]
NearPolicy = Literal["remove", "keep_grouped"]
CONFLICT_POLICIES = ("keep_survivor", "drop_group")
NEAR_POLICIES = ("remove", "keep_grouped")

HASH_BITS = 64
# Multi-index hashing pays a gather per candidate pair; past this share of all pairs the
# blocked brute force, which streams memory, is faster. Only speed depends on these two.
# Measured: ~90 ns per MIH candidate against ~5 ns per brute-force pair.
_MIH_MAX_CANDIDATE_SHARE = 0.05
_BRUTE_FORCE_BLOCK_ELEMENTS = 1 << 18

def ledger_frame(records: list[dict[str, object]]) -> pd.DataFrame:
    """LEDGER-schema frame from dicts with the ledger's keys (validated by LedgerBuilder)."""
    builder = LedgerBuilder()
    for record in records:
        builder.add(**record)
    return schema_frame({c: builder.to_frame()[c] for c in LEDGER.column_names}, LEDGER)


# ---------------------------------------------------------------- hashes and pair search

def phash_to_uint64(phashes: pd.Series, names: pd.Series | None = None) -> np.ndarray:
    """16-hex-digit pHash strings -> uint64; raises naming the first bad value."""
    phashes = phashes.astype("str")
    valid = phashes.str.fullmatch(r"[0-9a-fA-F]{16}").fillna(False).to_numpy(dtype=bool)
    if not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        who = f"image {names.iloc[first]!r}" if names is not None else f"row {first}"
        raise ValueError(f"images table, {who}, field 'phash': {phashes.iloc[first]!r} is not 16 hex digits")
    if len(phashes) == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.frombuffer(bytes.fromhex("".join(phashes.tolist())), dtype=">u8").astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (uint8)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def _chunk_layout(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the max_distance+1 nearly equal bit chunks."""
    n_chunks = max_distance + 1
    widths = [HASH_BITS // n_chunks + (1 if k < HASH_BITS % n_chunks else 0) for k in range(n_chunks)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(s), int(w)) for s, w in zip(shifts, widths)]


def _chunk_keys(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < HASH_BITS else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (hashes >> np.uint64(shift)) & mask


def _pairs_in_equal_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i != j, with keys[i] == keys[j]; work proportional to the pairs."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    firsts, seconds = [], []
    active = np.arange(len(keys) - 1)
    offset = 1
    while active.size:
        active = active[active + offset < len(keys)]
        active = active[sorted_keys[active] == sorted_keys[active + offset]]
        firsts.append(order[active])
        seconds.append(order[active + offset])
        offset += 1
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def _ordered_unique_pairs(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    low, high = np.minimum(a, b), np.maximum(a, b)
    codes = np.unique(low * n + high)
    return np.stack([codes // n, codes % n], axis=1)


def _candidate_pair_count(hashes: np.ndarray, max_distance: int) -> int:
    total = 0
    for shift, width in _chunk_layout(max_distance):
        _, counts = np.unique(_chunk_keys(hashes, shift, width), return_counts=True)
        total += int((counts * (counts - 1) // 2).sum())
    return total


def near_pairs_multi_index(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (i < j) with Hamming distance <= max_distance, by multi-index hashing."""
    found_a, found_b = [], []
    for shift, width in _chunk_layout(max_distance):
        a, b = _pairs_in_equal_runs(_chunk_keys(hashes, shift, width))
        close = hamming(hashes[a], hashes[b]) <= max_distance
        found_a.append(a[close])
        found_b.append(b[close])
    return _ordered_unique_pairs(np.concatenate(found_a), np.concatenate(found_b), len(hashes))


def near_pairs_brute_force(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (i < j) with Hamming distance <= max_distance, by blocked vectorised XOR+popcount."""
    n = len(hashes)
    rows_per_block = max(1, _BRUTE_FORCE_BLOCK_ELEMENTS // max(n, 1))
    # Reused buffers: the search is memory-bound, and small blocks stay in cache.
    xor = np.empty(rows_per_block * n, np.uint64)
    count = np.empty(rows_per_block * n, np.uint8)
    close = np.empty(rows_per_block * n, bool)
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        shape = (stop - start, n - start)
        size = shape[0] * shape[1]
        block_xor = xor[:size].reshape(shape)
        np.bitwise_xor(hashes[start:stop, None], hashes[None, start:], out=block_xor)
        np.bitwise_count(block_xor, out=count[:size].reshape(shape))
        np.less_equal(count[:size].reshape(shape), max_distance, out=close[:size].reshape(shape))
        i, j = np.nonzero(close[:size].reshape(shape))
        upper = j > i  # column j of the block is hash start + j
        found.append(np.stack([i[upper] + start, j[upper] + start], axis=1).astype(np.int64))
    return np.concatenate(found)


def find_near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j, sorted) of hashes within `max_distance` bits; picks the faster search."""
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"dedup max_distance must be in [0, {HASH_BITS - 1}], got {max_distance}")
    n = len(hashes)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    all_pairs = n * (n - 1) // 2
    if _candidate_pair_count(hashes, max_distance) > _MIH_MAX_CANDIDATE_SHARE * all_pairs:
        pairs = near_pairs_brute_force(hashes, max_distance)
    else:
        pairs = near_pairs_multi_index(hashes, max_distance)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def group_hashes(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Component label per hash: equal hashes and chains of near hashes share a label."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    pairs = find_near_pairs(unique, max_distance)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(unique),) * 2)
    _, component = connected_components(graph, directed=False)
    return component[inverse.ravel()]


# ---------------------------------------------------------------- roles inside groups

def usable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] != "quarantined"]


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


# ---------------------------------------------------------------- entry point

def deduplicate(
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    max_distance: int,
    conflict_policy: ConflictPolicy,
    near_policy: NearPolicy = "remove",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Group exact and near-duplicate images and decide which train copies are used.

    Args:
        images: INGEST_IMAGES frame; quarantined images are left out (ingest's ledger has them).
        boxes: INGEST_BOXES frame; usable boxes give each train image its label multiset.
        max_distance: largest pHash Hamming distance that links two images (0 = exact only).
        conflict_policy: "keep_survivor" or "drop_group" for groups whose train labels differ.
        near_policy: "remove" keeps one train image per group; "keep_grouped" keeps one per
            distinct hash of a conflict-free group (the folds then keep the group together).

    Returns:
        (DUPLICATE_GROUPS frame, CURATED_IMAGES frame, LEDGER frame, summary dict).
    """
    if conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"dedup conflict_policy must be one of {CONFLICT_POLICIES}, got {conflict_policy!r}")
    if near_policy not in NEAR_POLICIES:
        raise ValueError(f"dedup near_policy must be one of {NEAR_POLICIES}, got {near_policy!r}")
    started = time.perf_counter()
    table = usable(images).sort_values("name", kind="stable").reset_index(drop=True)
    if table["name"].duplicated().any():
        raise ValueError(f"images table: NAME {table['name'][table['name'].duplicated()].iloc[0]!r} appears twice")
    hashes = phash_to_uint64(table["phash"], table["name"])
    component = group_hashes(hashes, max_distance)
    table["group_id"] = _group_ids(table["name"], component)
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
    summary = _dedup_summary(images, table, groups, conflicting_groups, max_distance, conflict_policy, near_policy)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return groups, curated, ledger, summary


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
    images: pd.DataFrame, table: pd.DataFrame, groups: pd.DataFrame, conflicting_groups: int,
    max_distance: int, conflict_policy: str, near_policy: str,
) -> dict:
    per_group = groups.groupby("group_id").agg(kind=("kind", "first"), splits=("split", "nunique"))
    return {
        "max_distance": int(max_distance),
        "conflict_policy": conflict_policy,
        "near_policy": near_policy,
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
