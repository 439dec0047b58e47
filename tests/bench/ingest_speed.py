"""Benchmark: ingest against a bare decode pass over the same images (issue 2 §4 target: ratio <= 1.5).

The bare pass is what any reader of the images pays at least: PIL open + convert('RGB') + np.asarray,
in the same number of worker processes with the same chunk size. Both passes run after one read of
every file, so neither profits alone from a warm page cache, and (by default) in ABBA order, twice
each, so that a load drifting on a shared machine weighs on both alike; figures are means per pass.

    python tests/bench/ingest_speed.py --images DIR --train CSV --test CSV --workers 2
    # a stand-in dataset from a few real smears (e.g. BCCD), resized to the challenge's usual size:
    python tests/bench/ingest_speed.py --replicate /work/shared/data/bccd/images --n-images 5000 \\
        --root /tmp/ingest_bench --workers 2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from leukoflow.constants import CLASSES
from leukoflow.images import decode_image, decode_rgb, phash_of_grey, reduced_grey, rgb_mean_std
from leukoflow.ingest.thumbnails import thumbnail
from leukoflow.ingest.contract import list_image_folder, read_csv_table, run_into

REPLICA_SIZE = (370, 368)  # "commonly 370x368" (Trustii README, docs/method.md §1.3)
REPLICA_QUALITY = 95
REPLICA_TEST_SHARE = 0.3  # docs/method.md §1.1: 20,751 of 69,168 images are test images


def bare_decode(path: str) -> tuple[int, ...]:
    """One decode; the synthetic set's injected broken files count as decoded (they cost nothing)."""
    try:
        return np.asarray(Image.open(path).convert("RGB")).shape
    except OSError:
        return ()


def referenced_paths(train: Path, test: Path, images: Path) -> list[str]:
    """The files ingest will decode: referenced by a CSV and present in the folder."""
    names = set()
    for table in (read_csv_table(train, ("NAME",)), read_csv_table(test, ("NAME",))):
        names |= {record[table.column("NAME")] for _, record in table}
    return [str(images / name) for name in sorted(names & list_image_folder(images))]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers once joined)."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_bare_decode(paths: list[str], workers: int, chunksize: int) -> None:
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap(bare_decode, paths, chunksize=chunksize):
                pass
    else:
        for path in paths:
            bare_decode(path)


def cpu_ms_per_image(paths: list[str], reduction: int, repeats: int = 3) -> dict[str, float]:
    """Where one image's time goes, in this process (CPU ms per image, best of `repeats`); the
    `*_reduced` steps are ingest's with `decode_reduction` = `reduction`."""
    datas = [Path(path).read_bytes() for path in paths]
    images = [decode_image(data)[0].convert("RGB") for data in datas]
    reduced = [decode_rgb(data, reduction) for data in datas]
    steps = {
        "bare_decode": (bare_decode, paths),
        "decode": (decode_image, datas),
        "decode_reduced": (lambda data: decode_rgb(data, reduction), datas),
        "sha256": (lambda data: hashlib.sha256(data).hexdigest(), datas),
        "mean_std": (rgb_mean_std, images),
        "mean_std_reduced": (lambda decoded: rgb_mean_std(decoded.image), reduced),
        "phash_exact": (lambda image: str(imagehash.phash(image)), images),
        "phash_and_thumbnail_full_size": (lambda image: _hash_and_thumbnail(image, None), images),
        "phash_and_thumbnail_reducing_gap_2": (lambda image: _hash_and_thumbnail(image, 2.0), images),
        "phash_and_thumbnail_reduced": (lambda decoded: _hash_and_thumbnail(decoded.image, 2.0, decoded.extent),
                                        reduced),
    }
    timings = {}
    for step, (function, inputs) in steps.items():
        best = math.inf
        for _ in range(repeats):
            started = time.process_time()
            for item in inputs:
                function(item)
            best = min(best, time.process_time() - started)
        timings[step] = round(1000 * best / len(inputs), 3)
    return timings


def _hash_and_thumbnail(image: Image.Image, reducing_gap: float | None, extent=None) -> tuple[str, str]:
    grey = reduced_grey(image, reducing_gap, extent)
    return phash_of_grey(grey), thumbnail(grey)


def warm_cache(paths: list[str]) -> None:
    for path in paths:
        Path(path).read_bytes()


def replicate(source: Path, n_images: int, root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """`n_images` JPEGs at REPLICA_SIZE cycled from `source`, with a train.csv and test.csv that reference them all."""
    images = root / "images"
    shutil.rmtree(root, ignore_errors=True)
    images.mkdir(parents=True)
    sources = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    resized = []
    for index, path in enumerate(sources):
        target = images / f"src{index:05d}.jpg"
        Image.open(path).convert("RGB").resize(REPLICA_SIZE).save(target, quality=REPLICA_QUALITY)
        resized.append(target)
    names = [f"{i:08x}-{i % 16:x}.jpg" for i in range(n_images)]
    for i, name in enumerate(names):
        shutil.copyfile(resized[i % len(resized)], images / name)
    for path in resized:
        path.unlink()
    rng = np.random.default_rng(seed)
    is_test = rng.random(n_images) < REPLICA_TEST_SHARE
    width, height = REPLICA_SIZE
    train, test = root / "train.csv", root / "test.csv"
    with train.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["NAME", "x1", "y1", "x2", "y2", "class"])
        for name in (n for n, t in zip(names, is_test) if not t):
            writer.writerow([name, width // 4, height // 4, 3 * width // 4, 3 * height // 4, CLASSES[rng.integers(len(CLASSES))]])
    with test.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trustii_id", "NAME"])
        writer.writerows([i, n] for i, n in enumerate(n for n, t in zip(names, is_test) if t))
    return train, test, images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path)
    parser.add_argument("--train", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--replicate", type=Path, help="make a stand-in dataset from the images of this folder")
    parser.add_argument("--n-images", type=int, default=5000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/ingest_bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=32)
    parser.add_argument("--out", type=Path, help="ingest output folder (default: a temporary one)")
    parser.add_argument("--phash-reducing-gap", type=float, default=2.0,
                        help="ingest's phash_reducing_gap (config default 2.0; a negative value: null, the exact pHash)")
    parser.add_argument("--decode-reduction", type=int, default=2, choices=(1, 2, 4, 8),
                        help="ingest's decode_reduction (config default 2; 1: full-size decode)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="1: bare then ingest; 2 (default) or more (even): ABBA order, means per pass")
    parser.add_argument("--profile-images", type=int, default=200, help="images for the per-step CPU profile (0: none)")
    args = parser.parse_args(argv)
    if args.phash_reducing_gap is not None and args.phash_reducing_gap < 0:
        args.phash_reducing_gap = None
    if args.replicate:
        args.train, args.test, args.images = replicate(args.replicate, args.n_images, args.root)
    if not (args.images and args.train and args.test):
        parser.error("give --images, --train and --test, or --replicate")

    paths = referenced_paths(args.train, args.test, args.images)
    warm_cache(paths)
    totals = {"bare": [0.0, 0.0], "ingest": [0.0, 0.0]}
    passes = []
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "ingest"
        # ABBA order (bare, ingest, ingest, bare, ...): a load that drifts during the run hits both alike
        order = ["bare", "ingest"] if args.rounds == 1 else ["bare", "ingest", "ingest", "bare"] * (args.rounds // 2)
        for kind in order:
            started, cpu_started = time.perf_counter(), cpu_seconds()
            if kind == "bare":
                run_bare_decode(paths, args.workers, args.chunksize)
            else:
                summary = run_into(out, train_csv=args.train, test_csv=args.test, images_dir=args.images,
                                   threads=args.workers, chunksize=args.chunksize,
                                   decode_reduction=args.decode_reduction,
                                   phash_reducing_gap=args.phash_reducing_gap, max_image_mb=64)
            wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
            totals[kind][0] += wall
            totals[kind][1] += cpu
            passes.append({"pass": kind, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                           "load": round(os.getloadavg()[0], 2)})
    (bare_seconds, bare_cpu), (ingest_seconds, ingest_cpu) = totals["bare"], totals["ingest"]
    runs = len(passes) // 2
    bare_seconds, bare_cpu, ingest_seconds, ingest_cpu = (x / runs for x in (bare_seconds, bare_cpu, ingest_seconds,
                                                                               ingest_cpu))
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {multiprocessing.cpu_count()} cpus, python {platform.python_version()}",
        "images": len(paths),
        "workers": args.workers,
        "chunksize": args.chunksize,
        "decode_reduction": args.decode_reduction,
        "phash_reducing_gap": args.phash_reducing_gap,
        "bare_decode_seconds": round(bare_seconds, 2),
        "bare_decode_images_per_second": round(len(paths) / bare_seconds, 1),
        "ingest_seconds": round(ingest_seconds, 2),
        "ingest_images_per_second": round(len(paths) / ingest_seconds, 1),
        "ratio_ingest_to_bare": round(ingest_seconds / bare_seconds, 2),
        # CPU seconds are robust to other load on a shared machine; wall seconds are not
        "bare_decode_cpu_seconds": round(bare_cpu, 2),
        "ingest_cpu_seconds": round(ingest_cpu, 2),
        "cpu_ratio_ingest_to_bare": round(ingest_cpu / bare_cpu, 2),
        "passes": passes,
        "cpu_ms_per_image": cpu_ms_per_image(paths[: args.profile_images], args.decode_reduction) if args.profile_images else {},
        "rows_in": summary["rows_in"],
        "images_quarantined": summary["images_quarantined"],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
