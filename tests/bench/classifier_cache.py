"""Size and training speed of the classifier-input cache: raw uint8 arrays against encoded shards.

Real smears: every box of a BCCD-style table (`train.csv`: NAME,x1,y1,x2,y2,class) grown by
`--margin` px, cut and squashed as the workflow does (`crop_cache.build_crop_cache`), at the
demo sizes and at the challenge sizes 384 and 512 px; the whole images too (the multilabel
model's input): BCCD's own 640x480 frames, and Cytologia-like images, i.e. a `--window` px square
(Cytologia's images are mostly 350-390 px around their cells) centred on each frame's first
box, squashed like a whole image. Per format: mean bytes per tile, the share of the raw bytes, encoding and
decoding time per tile, and whether decoding gives back the raw tiles bit for bit.

Challenge projection (`--cytologia`, the folder of the real challenge tables): the caches
config/cytologia.yaml's models read, with the row counts of those tables (a crop per train box
and per test image, every image, the background images with `per_image` + 1 crops each) and the
measured bytes per tile of the matching source and size (whole images and background images: the
Cytologia-like windows; background crops: the crops).

Throughput: `loop.train_fold` (the full recipe, as `tests/bench/classification_speed.py`) on the
same crops read from a memory-mapped `.npy` (the old raw-array path) and from the compact shard
(`PixelCache`, decoded per batch), interleaved, best of `--repeats`; the ratio is compact / raw.

    PYTHONPATH=workflow .venv/bin/python tests/bench/classifier_cache.py --data ../shared/data/bccd
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow.classification import crop_cache
from leukoflow.classification.items import ItemSet
from leukoflow.classification.pixel_shards import FORMATS
from leukoflow.classification.spec import ClassifierSpec, TrainSettings, model_defaults, with_defaults
from leukoflow.constants import CLASSES

REPO = Path(__file__).resolve().parents[2]


def bccd_crops(data: Path, margin: float) -> tuple[pd.DataFrame, dict[str, str]]:
    """CROPS-like rows (one per box, grown by `margin`, clipped) and the image paths."""
    from PIL import Image

    boxes = pd.read_csv(data / "train.csv")
    paths = {name: str(data / "images" / name) for name in boxes["NAME"].unique()}
    sizes = {name: Image.open(path).size for name, path in paths.items()}
    width = boxes["NAME"].map(lambda n: sizes[n][0]).to_numpy(float)
    height = boxes["NAME"].map(lambda n: sizes[n][1]).to_numpy(float)
    crops = pd.DataFrame({
        "crop_id": [f"{name}#{k}" for k, name in enumerate(boxes["NAME"])], "name": boxes["NAME"],
        "split": "train", "fold": np.arange(len(boxes)) % 4,
        "x1": np.clip(boxes["x1"] - margin, 0, width), "y1": np.clip(boxes["y1"] - margin, 0, height),
        "x2": np.clip(boxes["x2"] + margin, 0, width), "y2": np.clip(boxes["y2"] + margin, 0, height),
        "label": boxes["class"].astype(str),
    })
    return crops, paths


def windows(crops: pd.DataFrame, side: int) -> pd.DataFrame:
    """One `side` px square per image, centred on its first box and shifted inside the frame."""
    from PIL import Image

    first = crops.drop_duplicates("name").reset_index(drop=True)
    frames = []
    for row in first.itertuples(index=False):
        with Image.open(row.path) as image:
            width, height = image.size
        cx, cy = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2
        x1 = float(np.clip(round(cx - side / 2), 0, max(width - side, 0)))
        y1 = float(np.clip(round(cy - side / 2), 0, max(height - side, 0)))
        frames.append({**row._asdict(), "x1": x1, "y1": y1, "x2": min(x1 + side, width), "y2": min(y1 + side, height)})
    return pd.DataFrame(frames).drop(columns="path")


def build(kind: str, crops: pd.DataFrame, paths: dict[str, str], size: int, fmt: str, folder: Path,
          threads: int) -> tuple[crop_cache.PixelCache, float]:
    """One cache of crops or whole images; returns its reader and the build seconds."""
    stem = folder / f"{kind}_{size}_{fmt}"
    started = time.perf_counter()
    if kind in ("crops", "windows"):
        index = crop_cache.build_crop_cache(crops, paths, size, stem.with_suffix(".shard"), threads=threads, fmt=fmt)
    else:
        rows = pd.DataFrame({"name": list(paths), "path": list(paths.values()), "fold": 0, "role": "train"})
        index = crop_cache.build_image_cache(rows, size, stem.with_suffix(".shard"), threads=threads, fmt=fmt)
    seconds = time.perf_counter() - started
    crop_cache.write_index(index, stem.with_suffix(".parquet"))
    pixels, _ = crop_cache.read_cache(stem.with_suffix(".shard"), stem.with_suffix(".parquet"))
    return pixels, seconds


def size_rows(crops: pd.DataFrame, paths: dict[str, str], sizes: list[int], folder: Path, threads: int,
              window: int) -> list[dict]:
    rows = []
    framed = windows(crops.assign(path=crops["name"].map(paths)), window)
    for kind in ("crops", "windows", "images"):
        for size in sizes:
            table = framed if kind == "windows" else crops
            raw, _ = build(kind, table, paths, size, "raw", folder, threads)
            reference = raw[:]
            raw_bytes = reference[0].nbytes
            for fmt in FORMATS:
                pixels, seconds = build(kind, table, paths, size, fmt, folder, threads)
                started = time.perf_counter()
                decoded = pixels[:]
                decode_ms = 1000 * (time.perf_counter() - started) / len(pixels)
                per_tile = float(pixels.lengths.mean())
                source = f"image windows {window} px" if kind == "windows" else kind
                rows.append({"source": source, "size": size, "format": fmt, "tiles": len(pixels),
                             "bytes_per_tile": round(per_tile), "raw_bytes_per_tile": raw_bytes,
                             "share_of_raw": round(per_tile / raw_bytes, 4),
                             "build_ms_per_tile": round(1000 * seconds / len(pixels), 2),
                             "decode_ms_per_tile": round(decode_ms, 3),
                             "lossless": bool(np.array_equal(decoded, reference))})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def items_of(crops: pd.DataFrame, n_outputs: int) -> ItemSet:
    classes = crops["label"].map({name: k for k, name in enumerate(sorted(set(crops["label"])))}).to_numpy()
    n = len(crops)
    return ItemSet(source=np.zeros(n, dtype="int64"), row=np.arange(n),
                   target=np.eye(n_outputs, dtype=np.float32)[classes], ids=crops["crop_id"].to_numpy(str),
                   names=crops["name"].to_numpy(str), folds=np.zeros(n, dtype="int64"), trustii=np.full(n, -1),
                   real=np.ones(n, dtype=bool), role=np.full(n, "train"))


def throughput(spec: ClassifierSpec, cache, items: ItemSet, threads: int, folder: Path) -> float:
    from leukoflow.classification.loop import train_fold

    settings = TrainSettings(seed=0, device="cpu", threads=threads, amp=True, deterministic=True,
                             channels_last=True, prefetch=True)
    empty = items.subset(np.zeros(len(items), dtype=bool))
    summary = train_fold(spec, [cache], items, empty, folder / f"run_{time.time_ns()}", fold=0, settings=settings)
    return summary["train_images_per_second"]


def speed_row(model: str, crops: pd.DataFrame, paths: dict[str, str], fmt: str, args, folder: Path) -> dict:
    backbone, size = model.split(":")
    entry = {"name": "bench", "backbone": backbone, "kind": "multiclass", "img_size": int(size),
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3, "validations_per_epoch": 1}
    spec = ClassifierSpec.from_config(with_defaults(entry, model_defaults(REPO / "config" / "schema.yaml")))
    subset = crops.head(args.n_items)
    compact, _ = build("crops", subset, paths, spec.img_size, fmt, folder, args.threads)
    compact.decoders = args.threads  # as the training rule sets it (classifiers.threads)
    raw_path = folder / f"raw_{size}.npy"
    np.save(raw_path, compact[:])
    raw = np.load(raw_path, mmap_mode="r")
    items = items_of(subset, len(CLASSES))
    raw_runs, compact_runs = [], []
    for _ in range(args.repeats):  # interleaved: a load change on the machine hits both
        raw_runs.append(throughput(spec, raw, items, args.threads, folder))
        compact_runs.append(throughput(spec, compact, items, args.threads, folder))
    row = {"model": model, "format": fmt, "items": len(items), "raw_img_s": max(raw_runs),
           "compact_img_s": max(compact_runs), "ratio": round(max(compact_runs) / max(raw_runs), 3),
           "raw_runs": raw_runs, "compact_runs": compact_runs}
    print(json.dumps(row), flush=True)
    return row


def projection(sizes: list[dict], cytologia: Path, window: int, fmt: str) -> list[dict]:
    """Raw vs `fmt` gigabytes of config/cytologia.yaml's caches at the challenge's row counts."""
    from leukoflow.engine.config import load_config

    config = load_config(REPO / "config" / "cytologia.yaml")["classifiers"]
    train, test = pd.read_csv(cytologia / "train.csv"), pd.read_csv(cytologia / "test.csv")
    n_backgrounds = len(pd.read_csv(cytologia / "background_images.csv"))
    rows_of = {"crops": len(train) + len(test), "images": train["NAME"].nunique() + len(test),
               "background_crops": n_backgrounds * (config["background_crops"]["per_image"] + 1),
               "background_images": n_backgrounds}
    measured_as = {"crops": "crops", "background_crops": "crops", "images": f"image windows {window} px",
                   "background_images": f"image windows {window} px"}
    share = {(r["source"], r["size"], r["format"]): r["bytes_per_tile"] for r in sizes}
    caches = set()
    for model in config["models"]:
        multiclass = model["kind"] == "multiclass"
        caches.add(("crops" if multiclass else "images", model["img_size"]))
        if model.get("background"):
            caches.add(("background_crops" if multiclass else "background_images", model["img_size"]))
    out = []
    for source, size in sorted(caches):
        key = (measured_as[source], size, fmt)
        if key not in share:
            raise SystemExit(f"projection: no measurement of {key}; add {size} to --sizes")
        n = rows_of[source]
        out.append({"cache": f"{source}_{size}", "rows": n, "raw_gb": n * size * size * 3 / 1e9,
                    "compact_gb": n * share[key] / 1e9})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv and images/")
    parser.add_argument("--margin", type=float, default=16.0, help="px per side (config ground_truth_margin)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 224, 384, 512])
    parser.add_argument("--cytologia", type=Path, help="folder of the challenge tables: adds the projection")
    parser.add_argument("--window", type=int, default=370, help="side of the Cytologia-like image windows (px)")
    parser.add_argument("--skip-sizes", action="store_true", help="throughput only")
    parser.add_argument("--skip-speed", action="store_true", help="sizes only")
    parser.add_argument("--models", nargs="+", default=["resnet10t:48", "resnet10t:384"], help="backbone:size")
    parser.add_argument("--format", default="webp", choices=FORMATS, help="compact format timed against raw")
    parser.add_argument("--n-items", type=int, default=96, help="crops per throughput run")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads and decoders (classifiers.threads)")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    crops, paths = bccd_crops(args.data, args.margin)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        sizes = [] if args.skip_sizes else size_rows(crops, paths, args.sizes, folder, args.build_threads, args.window)
        speeds = [] if args.skip_speed else [speed_row(model, crops, paths, args.format, args, folder)
                                             for model in args.models]
    print(f"\n{date.today()}  {len(crops)} crops, {len(paths)} images; throughput: {args.n_items} crops, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, threads {args.threads}, best of {args.repeats}")
    print("| source | px | format | bytes/tile | share of raw | build ms/tile | decode ms/tile | lossless |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sizes:
        print(f"| {r['source']} | {r['size']} | {r['format']} | {r['bytes_per_tile']:,} | {r['share_of_raw']:.3f} "
              f"| {r['build_ms_per_tile']} | {r['decode_ms_per_tile']} | {r['lossless']} |")
    if args.cytologia and sizes:
        caches = projection(sizes, args.cytologia, args.window, args.format)
        raw, compact = sum(c["raw_gb"] for c in caches), sum(c["compact_gb"] for c in caches)
        print(f"\n| cache (config/cytologia.yaml) | rows | raw GB | {args.format} GB |\n|---|---|---|---|")
        for c in caches:
            print(f"| {c['cache']} | {c['rows']:,} | {c['raw_gb']:.1f} | {c['compact_gb']:.1f} |")
        print(f"| total | | {raw:.1f} | {compact:.1f} (share {compact / raw:.3f}) |")
    print("\n| model | format | raw img/s | compact img/s | ratio |\n|---|---|---|---|---|")
    for r in speeds:
        print(f"| {r['model']} | {r['format']} | {r['raw_img_s']} | {r['compact_img_s']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
