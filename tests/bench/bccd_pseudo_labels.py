"""BCCD real smears with pseudo-label rounds off, then on, back to back on one machine.

Run "off" is config/bccd.yaml with the test overlay tests/configs/bccd_tiny.yaml (small detectors;
detector 2, which cuts the classifier crops, trained like detector 1 at 128 px) and the multiclass
classifier of config/bccd.yaml (resnet10t, 64 px, 8 epochs). Each run "on" starts from a copy of
run "off" and adds one round: a multiclass model initialised from each fold's round-0 model and
trained on that fold's crops plus the held-out smears' single-cell crops that the round-0 models
of the same fold label with confidence >= the round's threshold (`--thresholds`: the config's
0.92 first). Snakemake re-runs only what the round changes (the round's model, the ensemble, the
submission), so all runs share the detectors and the round-0 classifier bit for bit.

    PYTHONPATH=workflow .venv/bin/python tests/bench/bccd_pseudo_labels.py --data ../shared/data/bccd \\
        --work /tmp/bccd_pseudo [--thresholds 0.92 0.5]

Prints one JSON object: per run the held-out score (results/metrics.json), classifier OOF macro F1
per model, the ensemble's OOF figures, the pseudo-label summary and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
ROUND0 = {"name": "mc_resnet10t_64", "backbone": "resnet10t", "kind": "multiclass", "img_size": 64, "epochs": 8,
          "batch_size": 32, "lr": 0.002, "tta": "hflip", "validations_per_epoch": 1}
MULTILABEL = {"name": "ml_resnet10t_32_bg", "backbone": "resnet10t", "kind": "multilabel", "img_size": 32,
              "background": True, "loss": "focal_bce", "epochs": 2, "batch_size": 16, "lr": 0.002, "tta": "none",
              "validations_per_epoch": 1}
ROUND1 = {**ROUND0, "name": "mc_resnet10t_64_pl1", "epochs": 4, "lr": 0.001, "pseudo_round": 1,
          "init_from": "mc_resnet10t_64"}


def run(workdir: Path, overlays: list[Path], cores: int) -> float:
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), "--configfile", str(REPO / "config" / "bccd.yaml"), *map(str, overlays)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1)


def figures(workdir: Path) -> dict:
    read = lambda relative: json.loads((workdir / "results" / relative).read_text())  # noqa: E731
    classification = read("classification/summary.json")
    ensemble = read("ensemble/summary.json")
    pseudo = workdir / "results" / "pseudo_labels" / "summary.json"
    return {
        "held_out": {key: read("metrics.json")[key] for key in ("score", "mean_rescaled_giou", "macro_f1")},
        "oof_macro_f1": classification["oof_macro_f1"],
        "ensemble": {key: ensemble.get(key) for key in ("best_oof", "best_single_model", "best_single_model_oof", "nested_estimate", "weights")},
        "pseudo_labels": json.loads(pseudo.read_text()) if pseudo.exists() else None,
    }


def write_overlay(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the BCCD folder (train.csv, test.csv, images/)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.92])
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "off").mkdir(parents=True)
    common = [write_overlay(args.work / "data.yaml", {"data": {"dir": str(args.data.resolve())}}),
              REPO / "tests" / "configs" / "notrack.yaml", REPO / "tests" / "configs" / "bccd_tiny.yaml"]
    det1 = yaml.safe_load((REPO / "tests" / "configs" / "bccd_tiny.yaml").read_text())["detectors"]["det1"]
    detector2 = {"detectors": {"det2": {**det1, "clean": True}}}
    off = common + [write_overlay(args.work / "off.yaml", {**detector2, "classifiers": {"models": [ROUND0, MULTILABEL]}})]
    results = {"off": {"seconds": run(args.work / "off", off, args.cores)}}
    results["off"].update(figures(args.work / "off"))
    for threshold in args.thresholds:
        name = f"on_{threshold:g}"
        shutil.copytree(args.work / "off", args.work / name, symlinks=True)  # copy2 keeps the mtimes
        overlay = {**detector2, "classifiers": {"models": [ROUND0, MULTILABEL, ROUND1]},
                   "pseudo_labels": {"thresholds": [threshold]}}
        seconds = run(args.work / name, off[:-1] + [write_overlay(args.work / f"{name}.yaml", overlay)], args.cores)
        results[name] = {"seconds_after_off": seconds, **figures(args.work / name)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
