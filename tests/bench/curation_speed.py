"""Time the curation steps: on an ingest output folder, and a synthetic duplicate-search stress.

Usage:
    PYTHONPATH=workflow python tests/bench/curation_speed.py [--ingest-dir results/ingest]
        [--stress-hashes 69168] [--max-distance 4] [--seed 0]

The stress test draws random 64-bit hashes with planted exact and near copies (like the 69,168
train + test images of Cytologia) and times `duplicates.find_near_pairs` and `group_hashes`
alone, since only the duplicate search grows faster than linearly with the image count.
Prints one JSON object of seconds and counts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from leukoflow.curation.box_repair import repair_boxes
from leukoflow.curation.duplicates import deduplicate, find_near_pairs, group_hashes
from leukoflow.curation.folds import DEFAULT_BINS, make_folds
from leukoflow.tables import INGEST_BOXES, INGEST_IMAGES, read_table

PLANTED_SHARE = 0.01  # share of hashes overwritten by a copy of another hash


def planted_hashes(n: int, max_distance: int, seed: int) -> np.ndarray:
    """Random hashes; PLANTED_SHARE of them become copies of others with 0..max_distance bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    n_planted = int(n * PLANTED_SHARE)
    sources = rng.choice(n, n_planted, replace=False)
    targets = rng.choice(n, n_planted, replace=False)
    for source, target in zip(sources, targets):
        value = int(hashes[source])
        for bit in rng.choice(64, int(rng.integers(0, max_distance + 1)), replace=False):
            value ^= 1 << int(bit)
        hashes[target] = np.uint64(value)
    return hashes


def time_stress(n: int, max_distance: int, seed: int) -> dict:
    hashes = planted_hashes(n, max_distance, seed)
    started = time.perf_counter()
    pairs = find_near_pairs(np.unique(hashes), max_distance)
    search = time.perf_counter() - started
    started = time.perf_counter()
    component = group_hashes(hashes, max_distance)
    grouping = time.perf_counter() - started
    sizes = np.bincount(component)
    return {"hashes": n, "max_distance": max_distance, "near_pairs": int(len(pairs)),
            "groups": int((sizes > 1).sum()), "search_seconds": round(search, 3),
            "search_and_grouping_seconds": round(grouping, 3)}


def time_ingest(ingest_dir: Path, max_distance: int, seed: int) -> dict:
    images = read_table(ingest_dir / "images.parquet", INGEST_IMAGES)
    boxes = read_table(ingest_dir / "boxes.parquet", INGEST_BOXES)
    started = time.perf_counter()
    _, curated, _, dedup = deduplicate(images, boxes, max_distance=max_distance, conflict_policy="keep_survivor")
    dedup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    kept_boxes, _, repair = repair_boxes(boxes, curated)
    repair_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, _, folds = make_folds(curated, kept_boxes, n_folds=4, seed=seed, bins=DEFAULT_BINS)
    folds_seconds = time.perf_counter() - started
    return {"images": len(images), "boxes": len(boxes), "duplicate_groups": dedup["duplicate_groups"],
            "deduplicate_seconds": round(dedup_seconds, 3), "repair_boxes_seconds": round(repair_seconds, 3),
            "make_folds_seconds": round(folds_seconds, 3),
            "fold_max_class_deviation": folds["fold_max_class_deviation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest-dir", type=Path, help="folder with images.parquet and boxes.parquet")
    parser.add_argument("--stress-hashes", type=int, default=69_168)
    parser.add_argument("--max-distance", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {"stress": time_stress(args.stress_hashes, args.max_distance, args.seed)}
    if args.ingest_dir:
        report["ingest"] = time_ingest(args.ingest_dir, args.max_distance, args.seed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
