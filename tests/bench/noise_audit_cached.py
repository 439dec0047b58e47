"""Noisy-box and label audits re-run on the cached tables of a finished run (seconds, no training).

Reads `<run>/results/...` (det-1 OOF raw boxes, curated images/boxes/folds, synthetic defects,
crops, reviewed boxes, multiclass OOF logits) with the noisy settings of a config file and prints
the summaries `flag_noisy_boxes` and `clean_labels` would write. Run it from a directory where the
run's image paths resolve (the run's own root), e.g.

    cd /tmp/run && PYTHONPATH=$REPO/workflow python $REPO/tests/bench/noise_audit_cached.py \
        --run . --config $REPO/config/config.yaml
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from leukoflow.detection import label_noise, noisy


def finished_run(description: str) -> tuple[Path, dict]:
    """(`<run>/results`, the config's `noisy` settings) from the command line's --run and --config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", default=".", help="root of a finished run (holds results/)")
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    return Path(args.run) / "results", yaml.safe_load(Path(args.config).read_text())["noisy"]


def main() -> None:
    results, settings = finished_run(__doc__.splitlines()[0])
    defects = [str(results / "synthetic/defects.parquet")]
    with tempfile.TemporaryDirectory() as out:
        boxes = noisy.flag_noisy_boxes(
            raw=sorted(glob.glob(str(results / "detection/det1/fold*/oof_raw.parquet"))),
            images=str(results / "curation/images.parquet"), boxes=str(results / "curation/boxes.parquet"),
            folds=str(results / "curation/folds.parquet"), defects=defects, flags=f"{out}/flags.parquet",
            gallery=f"{out}/gallery", by_kind=f"{out}/by_kind.csv", evidence=settings["evidence"],
            decision=settings["decision"], gallery_settings=settings["gallery"])
        labels = label_noise.clean_labels(
            crops=str(results / "crops/crops.parquet"), label_boxes=str(results / "detection/reviewed_boxes.parquet"),
            logits=sorted(glob.glob(str(results / "classification/*/oof_logits.parquet"))), defects=defects,
            label_flags=f"{out}/label_flags.parquet", **settings["labels"])
        print(json.dumps({k: v for k, v in boxes.items() if k != "noisy_by_kind"}, default=str))
        print(pd.read_csv(f"{out}/by_kind.csv").to_string(index=False))
        print(json.dumps(labels, default=str))


if __name__ == "__main__":
    main()
