"""Speed benchmark of the synthetic generator (leukoflow.synthetic) at challenge scale.

Usage (from the repository root):
    PYTHONPATH=workflow nice -n 10 .venv/bin/python tests/bench/synthesize_speed.py \\
        --n-images 69168 --workers 2 --out /tmp/synth69k

Prints the generator's summary as JSON and a final line `images/s: <figure>`. The demo's defect
counts (config/config.yaml) are multiplied by --defect-scale so that a big dataset carries a
proportionate number of defects. With --phash-pairs the script also reports the smallest pHash
distance between distinct (non-defect) images over the first N images.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from leukoflow.synthetic import challenge_layout, synthesize

DEMO_DEFECTS = {"exact_duplicate": 4, "near_duplicate": 6, "conflicting_duplicate": 1, "train_test_duplicate": 2,
                "out_of_image_box": 6, "red_cell_box": 2, "oversized_box": 2, "wrong_label": 4,
                "unannotated_border_cell": 3, "truncated_jpeg": 1, "unreadable_file": 1, "greyscale_image": 1}


def min_phash_distance(out: Path, n: int) -> dict[str, float]:
    """Distances between the pHashes of the first n distinct, decodable, defect-free images."""
    defects = pd.read_parquet(out / "defects.parquet")
    excluded = set(defects["name"]) | set(defects["source"])
    paths = [p for p in sorted((out / "images").iterdir()) if p.name not in excluded][:n]
    hashes = np.array([int(str(imagehash.phash(Image.open(p).convert("RGB"))), 16) for p in paths], dtype=np.uint64)
    distances = np.concatenate([np.bitwise_count(hashes[i] ^ hashes[i + 1:]) for i in range(len(hashes) - 1)])
    return {"images": len(paths), "min": int(distances.min()), "p0.1": float(np.percentile(distances, 0.1)),
            "median": float(np.median(distances)), "pairs_le_6": int((distances <= 6).sum()),
            "pairs_le_12": int((distances <= 12).sum())}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=69_168)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--defect-scale", type=int, default=1)
    parser.add_argument("--phash-pairs", type=int, default=0, help="also check pHash distances of N images")
    parser.add_argument("--overwrite", action="store_true", help="delete --out first")
    parser.add_argument("--near-duplicate-max-distance", type=int, default=3)
    args = parser.parse_args()
    if args.out.exists():
        if not args.overwrite:
            parser.error(f"{args.out} exists; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    defects = {kind: count * args.defect_scale for kind, count in DEMO_DEFECTS.items()}
    cpu_before = _cpu_seconds()
    summary = synthesize(**challenge_layout(args.out), n_images=args.n_images, test_fraction=args.test_fraction,
                         seed=args.seed, jpeg_quality=args.jpeg_quality, defects=defects, threads=args.workers,
                         near_duplicate_max_distance=args.near_duplicate_max_distance)
    cpu = _cpu_seconds() - cpu_before
    print(json.dumps(summary, indent=1))
    # On a shared machine the wall-clock rate depends on the other load; the CPU-time rate does not.
    print(f"cpu seconds (this process + workers): {cpu:.0f}; images per cpu-second: {args.n_images / cpu:.1f}")
    if args.phash_pairs:
        started = time.perf_counter()
        print("phash:", json.dumps(min_phash_distance(args.out, args.phash_pairs)),
              f"({time.perf_counter() - started:.0f} s)")
    print(f"images/s: {summary['images_per_second']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
