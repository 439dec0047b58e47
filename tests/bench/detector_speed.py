"""Detector training speed in our rule vs plain `yolo detect train`, and inference ms per image.

Both trainings run as fresh processes on the same exported dataset and settings, one after the
other, so start-up costs are comparable; images/s = training images x epochs / wall seconds.

    PYTHONPATH=workflow nice -n 10 .venv/bin/python tests/bench/detector_speed.py [--images 64] [--imgsz 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from leukoflow.detection import datasets, yolo as detection

from leukoflow import offline  # noqa: E402
from tests.test_detection import make_smear_tables  # noqa: E402

SETTINGS = {"epochs": 3, "batch": 8, "nbs": 8, "warmup_epochs": 1, "close_mosaic": 1, "hsv_h": 0.0, "hsv_s": 0.0,
            "hsv_v": 0.0, "cache": "ram", "val": False, "workers": 0, "plots": False, "deterministic": True,
            "seed": 0}


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images (a quarter more are validation)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--size", type=int, default=352, help="generated image side (px)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="detector_speed_"))
    n_val = args.images // 4
    smears = make_smear_tables(root, n_train=args.images + n_val, n_test=0, n_folds=1, size=args.size)
    smears["folds"]["fold"] = [1] * args.images + [0] * n_val
    dataset = root / "dataset"
    datasets.write_yolo_dataset(images=smears["images"], boxes=smears["boxes"], folds=smears["folds"], fold=0,
                                 out_dir=dataset)
    offline.enforce()
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    train_args = {**SETTINGS, "imgsz": args.imgsz}
    ours = f"""
from leukoflow.detection import yolo as detection
detection.fit_detector(dataset_yaml={str(dataset / 'dataset.yaml')!r}, run_dir={str(root / 'ours')!r},
    weights_out={str(root / 'ours.pt')!r}, history_out={str(root / 'ours.csv')!r}, arch='yolo11n.yaml',
    train_args={ {k: v for k, v in train_args.items() if k not in ('workers', 'plots', 'deterministic', 'seed')}!r},
    seed=0, threads=2, device='cpu')
"""
    plain = [str(Path(sys.executable).with_name("yolo")), "detect", "train", f"data={dataset / 'dataset.yaml'}",
             "model=yolo11n.yaml", "pretrained=False", "device=cpu", f"project={root}", "name=plain",
             *(f"{k}={v}" for k, v in train_args.items())]
    seconds_plain = timed(plain, env)
    seconds_ours = timed([sys.executable, "-c", ours], env)
    images = args.images * SETTINGS["epochs"]
    paths = detection.image_paths_of(smears["images"], smears["folds"]["name"][smears["folds"]["fold"] == 0])
    detection.predict_images(root / "ours.pt", dict(list(paths.items())[:2]), imgsz=args.imgsz, conf=0.001,
                             iou=0.3, max_det=100, device="cpu", threads=2)  # warm-up
    started = time.perf_counter()
    detection.predict_images(root / "ours.pt", paths, imgsz=args.imgsz, conf=0.001, iou=0.3, max_det=100,
                             device="cpu", threads=2)
    ms_per_image = 1000 * (time.perf_counter() - started) / len(paths)
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "train_images": args.images, "epochs": SETTINGS["epochs"],
        "imgsz": args.imgsz, "image_side_px": args.size,
        "ours_seconds": round(seconds_ours, 2), "plain_yolo_seconds": round(seconds_plain, 2),
        "ours_images_per_second": round(images / seconds_ours, 2),
        "plain_images_per_second": round(images / seconds_plain, 2),
        "ratio_ours_to_plain": round(seconds_plain / seconds_ours, 3),
        "predict_ms_per_image": round(ms_per_image, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
