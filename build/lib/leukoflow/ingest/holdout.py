"""Hold out a test split from a dataset that ships only annotations (e.g. the BCCD smears).

Whole images go to the test side; the outputs mimic the challenge: train.csv, test.csv with one
row per expected cell (rows shuffled) and test_truth.csv with the answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.constants import TRAIN_COLUMNS


def hold_out_test(train_csv: str | Path, out_dir: str | Path, *, fraction: float, seed: int,
                  first_trustii_id: int = 1) -> dict[str, int]:
    boxes = pd.read_csv(train_csv)
    missing = [column for column in TRAIN_COLUMNS if column not in boxes.columns]
    if missing:
        raise ValueError(f"{train_csv}: missing column(s) {missing}; expected {list(TRAIN_COLUMNS)}")
    names = np.array(sorted(boxes["NAME"].astype(str).unique()))
    rng = np.random.default_rng(seed)
    n_test = int(round(len(names) * fraction))
    test_names = set(rng.choice(names, size=n_test, replace=False)) if n_test else set()
    is_test = boxes["NAME"].isin(test_names)
    truth = boxes[is_test].sample(frac=1.0, random_state=seed).reset_index(drop=True)
    truth.insert(0, "trustii_id", np.arange(first_trustii_id, first_trustii_id + len(truth)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes[~is_test].to_csv(out_dir / "train.csv", index=False)
    truth[["trustii_id", "NAME"]].to_csv(out_dir / "test.csv", index=False)
    truth.to_csv(out_dir / "test_truth.csv", index=False)
    return {
        "images_in": len(names), "test_images": n_test, "train_images": len(names) - n_test,
        "train_rows": int((~is_test).sum()), "test_rows": len(truth),
    }
