"""Scaling curves: wall time, CPU time, peak RSS and disk of each data-preparation stage as the data grows.

For each size N a synthetic set (`leukoflow.synthetic`, the generator of tests/bench/curation_speed.py:
the demo's defect mix scaled to N, plus realistic retakes and hard negatives; default image sizes,
about 370x370 JPEG quality 90) goes through ingest, curation (deduplicate, repair_boxes,
make_folds), YOLO export (detector 1: all folds) and classifier-input caching (ground-truth crops,
then the crop and whole-image pixel caches at the demo config's sizes), each stage a rule entry
called in its own child process with the shipped config/config.yaml settings. Per stage: wall and
CPU seconds (the child and its workers), peak RSS (largest single process of the stage's tree,
from `os.wait4`) and the disk its outputs take (`du`, allocated blocks).

    PYTHONPATH=workflow python tests/bench/scaling.py --work /tmp/scaling --sizes 10000 69168 300000 \\
        --csv docs/scaling.csv --plot docs/scaling.png [--prune] [--clean]

A stage whose result file exists under --work is not run again (so a long run can resume);
`--data N=DIR` uses an existing synthetic set for size N. `--expand N=M` builds size N instead from
size M's set (`--data` or generated) plus geometric variants of its images (the 7 rotations and
flips, `Image.transpose`, re-encoded at quality 90, boxes mapped alike, each variant in its source's
split): distinct images at about a third of the rendering cost, for sizes the generator would take
hours to render on a shared 2-core machine. `--prune` deletes the YOLO datasets and
pixel caches once measured (disk), `--clean` deletes each size's folder after the run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import pandas as pd

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
STAGES = ("generate", "ingest", "deduplicate", "repair_boxes", "make_folds", "export_yolo", "ground_truth_crops",
          "cache_crops", "cache_images")
PRUNED = ("export_yolo", "cache_crops", "cache_images")  # largest outputs, deletable once measured
DEMO_DEFECTS = {"exact_duplicate": 4, "near_duplicate": 6, "conflicting_duplicate": 1, "train_test_duplicate": 2}
RETAKES_PER_IMAGE, HARD_NEGATIVES_PER_IMAGE = 200 / 69_168, 400 / 69_168  # curation_speed.py's 69k mix
SEED = 42
TRANSFORMS = tuple(range(7))  # Image.Transpose values: the 7 non-identity rotations and flips


def classifier_sizes() -> dict[str, int]:
    """Pixel size of the crop cache and of the whole-image cache the demo config's classifiers read."""
    sizes = {"crops": 0, "images": 0}
    for spec in CONFIG["classifiers"]["models"]:
        source = "images" if spec["kind"] == "multilabel" else "crops"
        sizes[source] = max(sizes[source], int(spec["img_size"]))
    return sizes


def paths(folder: Path) -> dict[str, Path]:
    data, ingest, curation = folder / "data", folder / "ingest", folder / "curation"
    return {"data": data, "images": data / "images", "train_csv": data / "train.csv", "test_csv": data / "test.csv",
            "ingest": ingest, "ingest_images": ingest / "images.parquet", "ingest_boxes": ingest / "boxes.parquet",
            "curation": curation, "groups": curation / "duplicate_groups.parquet",
            "curated_images": curation / "images.parquet", "dedup_ledger": curation / "dedup_ledger.csv",
            "boxes": curation / "boxes.parquet", "held_out_boxes": curation / "held_out_boxes.parquet",
            "repair_ledger": curation / "repair_ledger.csv", "folds": curation / "folds.parquet",
            "balance": curation / "fold_balance.csv", "balance_plot": curation / "fold_balance.png",
            "yolo": folder / "yolo", "crops": folder / "classifier" / "ground_truth_crops.parquet",
            "cache": folder / "classifier" / "cache"}


def stage_outputs(stage: str, p: dict[str, Path]) -> list[Path]:
    """What a stage writes (its disk figure)."""
    sizes = classifier_sizes()
    return {
        "generate": [p["data"]], "ingest": [p["ingest"]],
        "deduplicate": [p["groups"], p["curated_images"], p["dedup_ledger"]],
        "repair_boxes": [p["boxes"], p["held_out_boxes"], p["repair_ledger"]],
        "make_folds": [p["folds"], p["balance"], p["balance_plot"]], "export_yolo": [p["yolo"]],
        "ground_truth_crops": [p["crops"]],
        "cache_crops": [p["cache"] / f"crops_{sizes['crops']}.{ext}" for ext in ("shard", "parquet")],
        "cache_images": [p["cache"] / f"images_{sizes['images']}.{ext}" for ext in ("shard", "parquet")],
    }[stage]


# ---------------------------------------------------------------- one stage (in the child process)

def run_stage(stage: str, folder: Path, n_images: int, workers: int, expand_from: Path | None = None) -> dict[str, Any]:
    """Call the stage's rule entry with the demo config's settings; returns its summary."""
    p = paths(folder)
    if stage == "generate" and expand_from is not None:
        return expand(expand_from, p["data"], n_images, workers)
    if stage == "generate":
        from leukoflow.synthetic import challenge_layout, synthesize

        scale = max(1, n_images // 400)
        defects = {kind: count * scale for kind, count in DEMO_DEFECTS.items()}
        retakes = max(1, round(RETAKES_PER_IMAGE * n_images))
        defects |= {"shifted_duplicate": retakes, "refocused_duplicate": retakes, "recoloured_duplicate": retakes,
                    "similar_smear": max(1, round(HARD_NEGATIVES_PER_IMAGE * n_images))}
        return synthesize(**challenge_layout(p["data"]), n_images=n_images, test_fraction=0.3, seed=SEED,
                          jpeg_quality=90, defects=defects, near_duplicate_max_distance=3, threads=workers)
    if stage == "ingest":
        from leukoflow.ingest import contract

        settings = CONFIG["ingest"]
        return contract.run_into(p["ingest"], train_csv=p["train_csv"], test_csv=p["test_csv"],
                                 images_dir=p["images"], threads=workers, chunksize=settings["chunksize"],
                                 decode_reduction=settings["decode_reduction"],
                                 phash_reducing_gap=settings["phash_reducing_gap"],
                                 max_image_mb=settings["max_image_mb"])
    if stage == "deduplicate":
        from leukoflow.curation.duplicates import deduplicate

        dedup = CONFIG["dedup"]
        return deduplicate(ingest_images=p["ingest_images"], ingest_boxes=p["ingest_boxes"], groups=p["groups"],
                           images=p["curated_images"], ledger=p["dedup_ledger"], max_distance=dedup["max_distance"],
                           min_similarity=dedup["min_similarity"], conflict_policy=dedup["conflict_policy"],
                           near_policy=dedup["near_policy"], holdout_fraction=0.0, seed=SEED,
                           neighbours=dedup["neighbours"])
    if stage == "repair_boxes":
        from leukoflow.curation.box_repair import repair_boxes

        return repair_boxes(ingest_boxes=p["ingest_boxes"], curated_images=p["curated_images"], boxes=p["boxes"],
                            held_out_boxes=p["held_out_boxes"], ledger=p["repair_ledger"])
    if stage == "make_folds":
        from leukoflow.curation.folds import make_folds

        folds = CONFIG["folds"]
        return make_folds(curated_images=p["curated_images"], curated_boxes=p["boxes"], folds=p["folds"],
                          balance=p["balance"], plot=p["balance_plot"], n_folds=folds["n_folds"], seed=SEED,
                          bins=folds["bins"])
    if stage == "export_yolo":
        from leukoflow.detection.datasets import export_yolo

        return export_yolo(images=str(p["curated_images"]), boxes=str(p["boxes"]), folds=str(p["folds"]),
                           n_folds=CONFIG["folds"]["n_folds"], datasets=str(p["yolo"]), noisy=[], backgrounds=[])
    if stage == "ground_truth_crops":
        from leukoflow.classification.preparation import ground_truth_crops

        p["crops"].parent.mkdir(parents=True, exist_ok=True)
        return ground_truth_crops(boxes=p["boxes"], folds=p["folds"], images=p["curated_images"], crops=p["crops"],
                                  margin=CONFIG["classifiers"]["ground_truth_margin"])
    if stage in ("cache_crops", "cache_images"):
        from leukoflow.classification.preparation import cache_classifier_inputs

        source = stage.removeprefix("cache_")
        size = classifier_sizes()[source]
        pixels, index = stage_outputs(stage, p)
        pixels.parent.mkdir(parents=True, exist_ok=True)
        return cache_classifier_inputs(
            images=p["curated_images"], crops=p["crops"] if source == "crops" else [],
            folds=p["folds"] if source == "images" else [], backgrounds=[], pixels=pixels, index=index,
            source=source, size=size, seed=SEED, background=CONFIG["classifiers"]["background_crops"],
            cache_format=CONFIG["classifiers"]["cache_format"], threads=workers)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def _variant(task: tuple[str, str, int]) -> tuple[int, int]:
    """Write one geometric variant of an image; returns the source's width and height."""
    from PIL import Image

    source, target, transform = task
    with Image.open(source) as image:
        size = image.size
        image.convert("RGB").transpose(TRANSFORMS[transform]).save(target, quality=90)
    return size


def map_boxes(boxes: pd.DataFrame, transform: int) -> pd.DataFrame:
    """x1,y1,x2,y2 (columns, with the source's W and H) under TRANSFORMS[transform]."""
    x1, y1, x2, y2 = (boxes[c].to_numpy(float) for c in ("x1", "y1", "x2", "y2"))
    w, h = boxes["W"].to_numpy(float) - 1, boxes["H"].to_numpy(float) - 1  # last pixel index
    mapped = {  # Image.Transpose members by value: FLIP_LEFT_RIGHT 0, FLIP_TOP_BOTTOM 1, ROTATE_90 2 (counter-
        0: (w - x2, y1, w - x1, y2),  # clockwise), ROTATE_180 3, ROTATE_270 4, TRANSPOSE 5, TRANSVERSE 6
        1: (x1, h - y2, x2, h - y1), 2: (y1, w - x2, y2, w - x1), 3: (w - x2, h - y2, w - x1, h - y1),
        4: (h - y2, x1, h - y1, x2), 5: (y1, x1, y2, x2), 6: (h - y2, w - x2, h - y1, w - x1),
    }[transform]
    out = boxes.copy()
    for column, values in zip(("x1", "y1", "x2", "y2"), mapped):
        out[column] = values.round().astype(int)
    return out


def expand(source: Path, target: Path, n_images: int, workers: int) -> dict[str, Any]:
    """Size `n_images` from a set's images (hard links) plus their geometric variants, round-robin."""
    import pandas as pd

    started = time.perf_counter()
    images = target / "images"
    images.mkdir(parents=True)
    names = sorted(entry.name for entry in os.scandir(source / "images"))
    if n_images > len(names) * (1 + len(TRANSFORMS)):
        raise ValueError(f"{len(names)} images give at most {len(names) * (1 + len(TRANSFORMS))} with variants")
    for name in names:
        os.link(source / "images" / name, images / name)
    tasks = [(str(source / "images" / name), str(images / f"{Path(name).stem}v{k}.jpg"), k)
             for k in range(len(TRANSFORMS)) for name in names][: n_images - len(names)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        sizes = pool.map(_variant, tasks, chunksize=256)
    variants = pd.DataFrame({"source": [Path(t[0]).name for t in tasks], "NAME": [Path(t[1]).name for t in tasks],
                             "transform": [t[2] for t in tasks], "W": [s[0] for s in sizes],
                             "H": [s[1] for s in sizes]})
    train = pd.read_csv(source / "train.csv")
    rows = train.merge(variants, left_on="NAME", right_on="source", suffixes=("_source", ""))
    mapped = [map_boxes(group, transform) for transform, group in rows.groupby("transform")]
    new_rows = pd.concat(mapped)[train.columns] if mapped else train.iloc[:0]
    pd.concat([train, new_rows], ignore_index=True).to_csv(target / "train.csv", index=False)
    test = pd.read_csv(source / "test.csv")
    test_variants = variants[variants["source"].isin(set(test["NAME"]))]
    first_id = int(max(test["trustii_id"].max(), len(train) + len(test))) + 1
    extra = pd.DataFrame({"trustii_id": range(first_id, first_id + len(test_variants)),
                          "NAME": test_variants["NAME"].to_numpy()})
    pd.concat([test, extra], ignore_index=True).to_csv(target / "test.csv", index=False)
    return {"n_images": len(names) + len(tasks), "source_images": len(names), "variants": len(tasks),
            "train_rows": len(train) + len(new_rows), "seconds": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- measuring (in the parent)

def disk_bytes(targets: list[Path]) -> int:
    """Allocated bytes of files and folders (symlinks counted as links, not followed)."""
    existing = [str(t) for t in targets if t.exists() or t.is_symlink()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "-c", *existing], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def measure(stage: str, folder: Path, n_images: int, workers: int, expand_from: Path | None) -> dict[str, Any]:
    """Run one stage in a child process; its wall/CPU time, peak RSS and the disk of its outputs."""
    result_file = folder / "stages" / f"{stage}.summary.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--child-dir", str(folder),
               "--child-n", str(n_images), "--workers", str(workers), "--child-summary", str(result_file)]
    if stage == "generate" and expand_from is not None:
        command += ["--child-expand-from", str(expand_from)]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"stage {stage} at {n_images} images failed with exit code {process.returncode}")
    summary = json.loads(result_file.read_text())
    return {"n_images": n_images, "stage": stage, "wall_seconds": round(wall, 2),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB, largest process of the tree
            "disk_mib": round(disk_bytes(stage_outputs(stage, paths(folder))) / 2**20, 1),
            "workers": workers, "load_before": round(os.getloadavg()[0], 2),
            "summary_seconds": summary.get("seconds") if isinstance(summary, dict) else None}


def run_size(n_images: int, work: Path, workers: int, data: Path | None, prune: bool,
             expand_from: Path | None = None) -> list[dict[str, Any]]:
    folder = work / f"n{n_images}"
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None and not (folder / "data").exists():
        (folder / "data").symlink_to(data.resolve(), target_is_directory=True)
    rows = []
    for stage in STAGES:
        record = folder / "stages" / f"{stage}.json"
        if record.exists():
            rows.append(json.loads(record.read_text()))
            continue
        if stage == "generate" and data is not None:
            continue  # an existing set: not generated here
        row = measure(stage, folder, n_images, workers, expand_from)
        row["expanded_from"] = str(expand_from) if stage == "generate" and expand_from else ""
        row["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        record.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        rows.append(row)
        if prune and stage in PRUNED:
            for target in stage_outputs(stage, paths(folder)):
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return rows


# ---------------------------------------------------------------- report

def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["n_images", "stage", "wall_seconds", "cpu_seconds", "peak_rss_mib", "disk_mib", "workers",
              "load_before", "date", "expanded_from"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per stage: CPU s / wall s / peak RSS MiB / disk MiB at each size (BENCHMARKS.md)."""
    sizes = sorted({row["n_images"] for row in rows})
    cell = {(row["stage"], row["n_images"]): row for row in rows}
    lines = ["| stage | " + " | ".join(f"{n:,} images: CPU s / wall s / peak RSS MiB / disk MiB" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for stage in STAGES:
        values = []
        for n in sizes:
            row = cell.get((stage, n))
            values.append(f"{row['cpu_seconds']:,.1f} / {row['wall_seconds']:,.0f} / {row['peak_rss_mib']:,.0f} / "
                          f"{row['disk_mib']:,.1f}" if row else "not run")
        lines.append(f"| {stage} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def recorded_rows(work: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """The stage records already under `work` (no stage is run)."""
    return [json.loads((work / f"n{n}" / "stages" / f"{stage}.json").read_text())
            for n in sizes for stage in STAGES if (work / f"n{n}" / "stages" / f"{stage}.json").exists()]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    panels = (("cpu_seconds", "CPU seconds (stage + workers)"), ("peak_rss_mib", "peak RSS, MiB (largest process)"),
              ("disk_mib", "disk of the outputs, MiB"))
    rows = [row for row in rows if row["stage"] != "generate"]  # making the data is no pipeline stage
    if not rows:
        return
    sizes = sorted({row["n_images"] for row in rows})
    for axis, (key, title) in zip(axes, panels):
        for stage in STAGES[1:]:
            points = sorted((r["n_images"], r[key]) for r in rows if r["stage"] == stage and r[key] > 0)
            if points:
                axis.plot(*zip(*points), marker="o", label=stage)
        if key != "peak_rss_mib" and len(sizes) > 1:
            axis.plot(sizes, [max(r[key] for r in rows if r["n_images"] == sizes[0]) * n / sizes[0] for n in sizes],
                      color="grey", linestyle=":", label="linear from the smallest size")
        axis.set(xscale="log", yscale="linear" if key == "peak_rss_mib" else "log", xlabel="images", title=title)
        if key == "peak_rss_mib":
            axis.set_ylim(bottom=0)  # from zero: the share of the peak that grows with the data
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Data-preparation stages vs data size ({platform.machine()}, "
                    f"{multiprocessing.cpu_count()} CPUs, {rows[0]['workers']} workers)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/scaling"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 69_168, 300_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", action="append", default=[], metavar="N=DIR",
                        help="an existing synthetic set (challenge layout) for size N")
    parser.add_argument("--expand", action="append", default=[], metavar="N=M",
                        help="build size N from size M's set plus geometric variants of its images")
    parser.add_argument("--csv", type=Path, help="write all rows as CSV")
    parser.add_argument("--json", type=Path, help="write all rows as JSON")
    parser.add_argument("--plot", type=Path, help="write the three-panel PNG")
    parser.add_argument("--markdown", type=Path, help="write the per-stage table (BENCHMARKS.md)")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report the recorded stages")
    parser.add_argument("--prune", action="store_true", help="delete YOLO datasets and caches once measured")
    parser.add_argument("--clean", action="store_true", help="delete each size's folder after the run")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-summary", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-expand-from", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        summary = run_stage(args.child, args.child_dir, args.child_n, args.workers, args.child_expand_from)
        args.child_summary.write_text(json.dumps(summary, default=str))
        return []
    data = {int(n): Path(d) for n, d in (item.split("=", 1) for item in args.data)}
    expansions = {int(n): int(m) for n, m in (item.split("=", 1) for item in args.expand)}
    rows = recorded_rows(args.work, args.sizes) if args.report_only else []
    for n_images in [] if args.report_only else args.sizes:
        base = expansions.get(n_images)
        expand_from = (data.get(base) or paths(args.work / f"n{base}")["data"]) if base else None
        rows += run_size(n_images, args.work, args.workers, data.get(n_images), args.prune, expand_from)
        if args.clean:
            shutil.rmtree(args.work / f"n{n_images}")
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot and rows:
        plot(rows, args.plot)
    if args.markdown:
        args.markdown.write_text(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
