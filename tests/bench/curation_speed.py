"""Time and score the two-stage duplicate search on a synthetic dataset with known duplicates.

Usage:
    PYTHONPATH=workflow python tests/bench/curation_speed.py --work /tmp/dedup_bench --n-images 69168 \\
        [--retakes 200] [--hard-negatives 400] [--max-distance 10] [--min-similarity 0.9] [--neighbours 16] \\
        [--workers 2] [--rule-entry OUT]

Generates the synthetic set (the demo's defect counts scaled to the size, plus the realistic retakes
and hard negatives of `synthetic.near_duplicates`) unless `--work/data` exists, ingests it (one
decode per image: pHash and thumbnail) unless `--work/ingest` exists, then runs the duplicate
search with the confirming comparison and without it (`min_similarity=-1`: every hash candidate
linked), and times one bare decode pass over the images for comparison. Prints one JSON object:
seconds of generation, ingest, the decode pass and each search (wall and CPU; CPU time does not
depend on other jobs), and recall and precision overall and per duplicate kind for both searches.
With `--rule-entry OUT` it runs only the `deduplicate` rule entry (tables read and written as in the
workflow) and adds its peak RSS: the figures of BENCHMARKS.md "Dedup at scale".
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from PIL import Image

from leukoflow.curation.duplicates import deduplicate, find_duplicates
from leukoflow.curation.summary import dedup_scores
from leukoflow.ingest import contract
from leukoflow.synthetic import challenge_layout, synthesize
from leukoflow.tables import DEFECTS, DUPLICATE_GROUPS, INGEST_BOXES, INGEST_IMAGES, read_table

MAX_IMAGE_MB = 64  # no synthetic image comes near it
DEMO_DEFECTS = {"exact_duplicate": 4, "near_duplicate": 6, "conflicting_duplicate": 1, "train_test_duplicate": 2}


def generate(data: Path, args: argparse.Namespace) -> float:
    scale = max(1, args.n_images // 400)
    defects = {kind: count * scale for kind, count in DEMO_DEFECTS.items()}
    defects |= {"shifted_duplicate": args.retakes, "refocused_duplicate": args.retakes,
                "recoloured_duplicate": args.retakes, "similar_smear": args.hard_negatives}
    started = time.perf_counter()
    synthesize(**challenge_layout(data), n_images=args.n_images, test_fraction=0.3, seed=args.seed, jpeg_quality=90,
               defects=defects, near_duplicate_max_distance=3, threads=args.workers)
    return time.perf_counter() - started


def ingest(data: Path, out: Path, workers: int, phash_reducing_gap: float | None, decode_reduction: int) -> float:
    started = time.perf_counter()
    contract.run_into(out, train_csv=data / "train.csv", test_csv=data / "test.csv", images_dir=data / "images",
                      threads=workers, chunksize=64, decode_reduction=decode_reduction,
                      phash_reducing_gap=phash_reducing_gap,
                      max_image_mb=MAX_IMAGE_MB)
    return time.perf_counter() - started


def search(images, boxes, defects, args: argparse.Namespace, min_similarity: float) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    groups, _, _, summary = find_duplicates(images, boxes, max_distance=args.max_distance,
                                            min_similarity=min_similarity, conflict_policy="keep_survivor",
                                            near_policy="remove", holdout_fraction=0.0, seed=args.seed,
                                            neighbours=args.neighbours or None)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = dedup_scores(groups, defects)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "min_similarity": min_similarity,
            **{k: summary[k] for k in ("candidate_pairs", "confirmed_pairs", "duplicate_groups")}, **scores}


def rule_entry(ingested: Path, out: Path, defects, args: argparse.Namespace) -> dict:
    """The `deduplicate` rule entry as the workflow runs it; peak RSS is this process's (generation and
    ingest, when they ran here, are in their own worker processes)."""
    started, cpu = time.perf_counter(), time.process_time()
    summary = deduplicate(ingest_images=ingested / "images.parquet", ingest_boxes=ingested / "boxes.parquet",
                          groups=out / "duplicate_groups.parquet", images=out / "images.parquet",
                          ledger=out / "dedup_ledger.csv", max_distance=args.max_distance,
                          min_similarity=args.min_similarity, conflict_policy="keep_survivor", near_policy="remove",
                          holdout_fraction=0.0, seed=args.seed, neighbours=args.neighbours or None)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = dedup_scores(read_table(out / "duplicate_groups.parquet", DUPLICATE_GROUPS), defects)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **{k: summary[k] for k in ("neighbours", "candidate_pairs", "confirmed_pairs", "duplicate_groups")},
            **scores}


def bare_decode_cpu_seconds(images_dir: Path) -> float:
    """CPU seconds of decoding every image once to RGB (unreadable files skipped)."""
    started = time.process_time()
    for path in sorted(images_dir.iterdir()):
        try:
            with Image.open(path) as image:
                image.convert("RGB").load()
        except (OSError, SyntaxError, ValueError):
            continue
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n-images", type=int, default=69_168)
    parser.add_argument("--retakes", type=int, default=200, help="copies of each realistic retake kind")
    parser.add_argument("--hard-negatives", type=int, default=400)
    parser.add_argument("--max-distance", type=int, default=10)
    parser.add_argument("--min-similarity", type=float, default=0.9)
    parser.add_argument("--neighbours", type=int, default=16, help="nearest thumbnail layouts per image (0: all pairs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rule-entry", type=Path, metavar="OUT",
                        help="only run the deduplicate rule entry (tables in, tables written to OUT): seconds, "
                             "peak RSS and the scores; no decode pass, no hash-only search")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--phash-reducing-gap", type=float, default=2.0,
                        help="ingest's phash_reducing_gap (a negative value: null, the exact full-size pHash)")
    parser.add_argument("--decode-reduction", type=int, default=2, choices=(1, 2, 4, 8),
                        help="ingest's decode_reduction (1: full-size decode)")
    args = parser.parse_args()
    if args.phash_reducing_gap < 0:
        args.phash_reducing_gap = None
    data, out = args.work / "data", args.work / "ingest"
    report: dict = {"n_images": args.n_images, "phash_reducing_gap": args.phash_reducing_gap}
    if not data.exists():
        report["generate_seconds"] = round(generate(data, args), 1)
    if not out.exists():
        report["ingest_seconds"] = round(ingest(data, out, args.workers, args.phash_reducing_gap, args.decode_reduction), 1)
    defects = read_table(data / "defects.parquet", DEFECTS)
    if args.rule_entry:
        report["rule_entry"] = rule_entry(out, args.rule_entry, defects, args)
        print(json.dumps(report, indent=1))
        return
    images, boxes = read_table(out / "images.parquet", INGEST_IMAGES), read_table(out / "boxes.parquet", INGEST_BOXES)
    report["bare_decode_cpu_seconds"] = round(bare_decode_cpu_seconds(data / "images"), 2)
    report["confirmed"] = search(images, boxes, defects, args, args.min_similarity)
    report["hash_only"] = search(images, boxes, defects, args, -1.0)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
