"""`leukoflow predict` on a folder of many images: throughput (images/s) and peak RSS, per profile.

Fills a folder with `--images` copies of the given source images (distinct names, round robin),
then runs `python -m leukoflow.cli predict <folder> --bundle B --profile P` once per profile in a
child process and reads the child's peak resident memory from `getrusage(RUSAGE_CHILDREN)`, one
child per measurement (a fresh high-water mark each time).

    PYTHONPATH=workflow python tests/bench/predict_stream.py --bundle /tmp/run/results/bundle \
        --sources /tmp/run/data/synthetic/images --images 2000 --profiles fast full --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUFFIXES = (".jpg", ".jpeg", ".png")


def fill_folder(sources: list[Path], folder: Path, count: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for k in range(count):
        source = sources[k % len(sources)]
        shutil.copyfile(source, folder / f"{k:05d}{source.suffix}")


def measure(folder: Path, bundle: Path, profile: str, *, threads: int, chunk_size: int, out_dir: Path) -> dict:
    """One child process; its summary plus wall time and peak RSS (MiB)."""
    out = out_dir / f"predictions_{profile}.csv"
    command = [sys.executable, "-m", "leukoflow.cli", "predict", str(folder), "--bundle", str(bundle), "--out", str(out),
               "--profile", profile, "--threads", str(threads), "--chunk-size", str(chunk_size), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"profile": profile, "images": summary["images"], "cells": summary["cells"],
            "images_per_second": summary["images_per_second"],
            "images_per_second_wall": round(summary["images"] / wall, 2), "load_seconds": summary["load_seconds"],
            "wall_seconds": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024, 1), "threads": threads,
            "chunk_size": chunk_size, "date": date.today().isoformat(), "cpu": platform.processor() or platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--sources", type=Path, required=True, help="folder of source images")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--profiles", nargs="+", default=["fast", "full"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/leukoflow_predict_stream"))
    args = parser.parse_args()
    sources = sorted(p for p in args.sources.rglob("*") if p.suffix.lower() in SUFFIXES)
    folder = args.workdir / "images"
    fill_folder(sources, folder, args.images)
    for profile in args.profiles:  # RUSAGE_CHILDREN is a high-water mark: the larger profile goes last
        print(json.dumps(measure(folder, args.bundle, profile, threads=args.threads, chunk_size=args.chunk_size,
                                 out_dir=args.workdir)), flush=True)


if __name__ == "__main__":
    main()
