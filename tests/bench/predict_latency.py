"""CPU latency per image of `leukoflow predict` (models loaded once, one image per call).

Runs in a finished workflow directory: the bundle is results/bundle, the images are the kept test
images of results/curation/images.parquet and each call gets the image's expected cell count from
results/ingest/test.parquet (the challenge setting). For each profile (fast, full) and thread
count, the first `--warmup` images are predicted untimed, then `--images` images are timed one by
one; p50/p95/mean are printed in ms per image as one JSON line per setting.

    PYTHONPATH=workflow nice -n 10 .venv/bin/python tests/bench/predict_latency.py --workdir . --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.inference import predict

from leukoflow import tables


def bench_images(workdir: Path, count: int) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    images = tables.read_table(workdir / "results/curation/images.parquet", tables.CURATED_IMAGES)
    test = tables.read_table(workdir / "results/ingest/test.parquet", tables.INGEST_TEST)
    kept = images[(images["split"] == "test") & images["keep"]].sort_values("name")
    return list(zip(kept["name"], kept["path"]))[:count], test


def time_setting(bundle: Path, items: list[tuple[str, str]], test: pd.DataFrame, *, profile: str,
                 threads: int, warmup: int) -> dict:
    predictor = predict.Predictor(bundle, profile=profile, device="cpu", threads=threads)
    timings = []
    for position, (name, path) in enumerate(items):
        expected = test[test["name"] == name][["row", "trustii_id", "name", "status", "reason"]]
        started = time.perf_counter()
        predictor.predict({name: path}, expected)
        if position >= warmup:
            timings.append(1000 * (time.perf_counter() - started))
    values = np.array(timings)
    return {"profile": profile, "threads": threads, "images": len(values),
            "p50_ms": round(float(np.percentile(values, 50)), 1), "p95_ms": round(float(np.percentile(values, 95)), 1),
            "mean_ms": round(float(values.mean()), 1), "date": date.today().isoformat(),
            "cpu": platform.processor() or platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--images", type=int, default=20, help="timed images per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profiles", nargs="+", default=list(predict.PROFILES), choices=predict.PROFILES)
    args = parser.parse_args()

    items, test = bench_images(args.workdir, args.images + args.warmup)
    for profile in args.profiles:
        for threads in args.threads:
            print(json.dumps(time_setting(args.workdir / "results/bundle", items, test, profile=profile,
                                          threads=threads, warmup=args.warmup)), flush=True)


if __name__ == "__main__":
    main()
