"""Training throughput of leukoflow.classification.loop.train_fold against a plain timm training loop.

Both loops train the same backbone from scratch on the same uint8 crops (a seeded random array
written as a memory-mapped cache, as the workflow's), with the same batch size, epochs, threads
and AdamW. Ours is `train_fold` with the full recipe on (cache reads, batched
augmentation, Mixup/CutMix, the soft-target loss); its figure counts the training steps only
(validation and checkpoints excluded). The plain loop is the textbook one: a `TensorDataset` of
the same pixels through a `DataLoader`, normalise, `timm.create_model(num_classes=K)`,
cross-entropy, backward, step. Images per second over every step, first one included, best of
`--repeats` interleaved runs.

    PYTHONPATH=workflow .venv/bin/python tests/bench/classification_speed.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from leukoflow.classification.augment import IMAGENET_MEAN, IMAGENET_STD
from leukoflow.classification.items import ItemSet
from leukoflow.classification.loop import train_fold
from leukoflow.classification.model import build_model, predict_logits
from leukoflow.classification.spec import ClassifierSpec, TrainSettings

DEMO_MODELS = ("resnet10t:48:multiclass", "regnetx_002:48:multiclass", "resnet10t:64:multilabel")


def fake_items(n_items: int, n_outputs: int, size: int, kind: str, seed: int, folder: Path
               ) -> tuple[np.ndarray, ItemSet]:
    rng = np.random.default_rng(seed)
    path = folder / f"pixels_{size}.npy"
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_items, size, size, 3))
    pixels[:] = rng.integers(0, 256, pixels.shape, dtype=np.uint8)
    pixels.flush()
    classes = rng.integers(0, 23, n_items)
    target = np.eye(n_outputs, dtype=np.float32)[classes]
    if kind == "multilabel":
        target[np.arange(n_items), rng.integers(0, 23, n_items)] = 1.0
    items = ItemSet(source=np.zeros(n_items, dtype="int64"), row=np.arange(n_items), target=target,
                    ids=np.array([f"c{k}" for k in range(n_items)]),
                    names=np.array([f"c{k}" for k in range(n_items)]),
                    folds=np.zeros(n_items, dtype="int64"), trustii=np.full(n_items, -1),
                    real=np.ones(n_items, dtype=bool), role=np.full(n_items, "train"))
    return np.load(path, mmap_mode="r"), items


def ours(spec: ClassifierSpec, pixels: np.ndarray, items: ItemSet, threads: int, folder: Path) -> float:
    settings = TrainSettings(seed=0, device="cpu", threads=threads)
    empty = items.subset(np.zeros(len(items), dtype=bool))
    summary = train_fold(spec, [pixels], items, empty, folder / f"ours_{time.time_ns()}", fold=0,
                         settings=settings)
    return summary["train_images_per_second"]


def plain_timm(spec: ClassifierSpec, pixels: np.ndarray, items: ItemSet, threads: int) -> float:
    import timm

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(np.array(pixels)),
                                             torch.from_numpy(items.target))
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.batch_size, shuffle=True)
    model = timm.create_model(spec.backbone, pretrained=False, num_classes=spec.n_outputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images, seconds = 0, 0.0
    model.train()
    for _ in range(spec.epochs):
        for x, y in loader:
            started = time.perf_counter()
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            logits = model(x)
            if spec.kind == "multiclass":
                loss = torch.nn.functional.cross_entropy(logits, y.argmax(1))
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds += time.perf_counter() - started
            images += len(x)
    return images / seconds


def inference_ms_per_crop(spec: ClassifierSpec, pixels: np.ndarray, items: ItemSet, threads: int) -> float:
    """CPU inference of our predict path (normalise + forward, no TTA), best of three passes."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(spec)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        predict_logits(model, [pixels], items, batch_size=spec.batch_size, device=torch.device("cpu"))
        timings.append(time.perf_counter() - started)
    return 1000.0 * min(timings) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="backbone:size:kind")
    parser.add_argument("--n-items", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for model in args.models:
            backbone, size, kind = model.split(":")
            spec = ClassifierSpec(name="bench", backbone=backbone, kind=kind, img_size=int(size),
                                  loss="cross_entropy" if kind == "multiclass" else "focal_bce",
                                  epochs=args.epochs, batch_size=args.batch_size, lr=1e-3)
            pixels, items = fake_items(args.n_items, spec.n_outputs, spec.img_size, kind, 0, folder)
            ours_runs, plain_runs = [], []
            for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both
                ours_runs.append(ours(spec, pixels, items, args.threads, folder))
                plain_runs.append(plain_timm(spec, pixels, items, args.threads))
            ours_ips, plain_ips = max(ours_runs), max(plain_runs)
            rows.append({"model": model, "ours_img_s": round(ours_ips, 1), "plain_timm_img_s": round(plain_ips, 1),
                         "ratio": round(ours_ips / plain_ips, 3),
                         "infer_ms_per_crop": round(inference_ms_per_crop(spec, pixels, items, args.threads), 2)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{date.today()}  items={args.n_items} epochs={args.epochs} batch={args.batch_size} "
          f"threads={args.threads} repeats={args.repeats}")
    print("| model | ours img/s | plain timm img/s | ratio | inference ms/crop |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['ours_img_s']} | {row['plain_timm_img_s']} | {row['ratio']} "
              f"| {row['infer_ms_per_crop']} |")


if __name__ == "__main__":
    main()
