"""Speed of leukoflow.metric.score_files against the plain per-image reference loop.

Truth is the real Cytologia train.csv (52,748 cells) with trustii_id = row index; the
submission is a seeded jittered copy (boxes moved a few px, some classes flipped, some rows
dropped). Both tables go through temporary CSVs so the timing includes reading them.

    PYTHONPATH=workflow .venv/bin/python tests/bench/metric_speed.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from test_metric import reference_score  # noqa: E402  (the loop the property test trusts)

from leukoflow.constants import CLASSES  # noqa: E402
from leukoflow.metric import score_files  # noqa: E402

TRAIN_CSV = TESTS.parents[1] / "shared" / "data" / "cytologia" / "train.csv"


def jittered_submission(truth: pd.DataFrame, *, seed: int, max_shift_px: int,
                        flip_fraction: float, drop_fraction: float) -> pd.DataFrame:
    """Copy of truth with boxes shifted by up to max_shift_px, classes flipped, rows dropped."""
    rng = np.random.default_rng(seed)
    sub = truth.copy()
    for column in ("x1", "y1", "x2", "y2"):
        sub[column] = sub[column] + rng.integers(-max_shift_px, max_shift_px + 1, len(sub))
    flip = rng.random(len(sub)) < flip_fraction
    sub.loc[flip, "class"] = rng.choice(CLASSES, int(flip.sum()))
    keep = rng.random(len(sub)) >= drop_fraction
    return sub.loc[keep].sample(frac=1.0, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    truth = pd.read_csv(TRAIN_CSV)
    truth.insert(0, "trustii_id", np.arange(len(truth)))
    sub = jittered_submission(truth, seed=args.seed, max_shift_px=4, flip_fraction=0.10,
                              drop_fraction=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv, sub_csv = Path(tmp) / "truth.csv", Path(tmp) / "submission.csv"
        truth.to_csv(truth_csv, index=False)
        sub.to_csv(sub_csv, index=False)
        fast_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fast = score_files(truth_csv, sub_csv)
            fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = reference_score(pd.read_csv(truth_csv), pd.read_csv(sub_csv))
        slow_time = time.perf_counter() - start

    for key in ("score", "mean_rescaled_giou", "macro_f1"):
        assert abs(getattr(fast, key) - slow[key]) <= 1e-9, (key, getattr(fast, key), slow[key])
    fast_time = min(fast_times)
    print(f"| {date.today()} | {len(truth):,} truth rows, {len(sub):,} submission rows "
          f"| score_files {fast_time:.3f} s (best of {args.repeats}) | reference loop "
          f"{slow_time:.2f} s | {slow_time / fast_time:.0f}x | score {fast.score:.12f} "
          f"| mean rescaled GIoU {fast.mean_rescaled_giou:.12f} | macro F1 {fast.macro_f1:.12f} |")


if __name__ == "__main__":
    main()
