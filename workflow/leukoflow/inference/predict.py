"""`leukoflow predict`: a folder of thousands of smears through a model bundle, in bounded memory.

Images are collected (files, folders recursively, globs; ids are relative paths, `inputs.py`),
then predicted in chunks: each chunk runs the whole chain (`predictor.Predictor`), its rows are
appended to the CSV and made durable, and its image ids are recorded in `<out>.progress`. Memory
therefore depends on the chunk size, not on the number of images; an interrupted run started
again with the same arguments skips the images already done (rows of a chunk that was cut off
between the CSV and the progress record are dropped first). When every image is done the COCO
JSON is written and the progress file removed.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leukoflow.inference import inputs as image_inputs
from leukoflow.inference import outputs
from leukoflow.inference.bundle import Bundle, load_bundle
from leukoflow.inference.predictor import PROFILES, Predictor
from leukoflow.inference.thresholds import calibrate_min_score, threshold_boxes  # noqa: F401  (public here)

PROGRESS_SUFFIX = ".progress"


def check_settings(*, min_score: float | None, nms_iou: float | None, threads: int | None, chunk_size: int,
                   profile: str) -> None:
    """Refuse numeric flags that are not finite or out of range, naming the flag.

    Raises:
        ValueError: e.g. `--min-score nan`, `--nms-iou -3`, `--threads 0`.
    """
    def bad(flag: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"predict: {flag} {value!r} is not allowed: {allowed}")

    if min_score is not None and not (math.isfinite(min_score) and 0.0 <= min_score <= 1.0):
        raise bad("--min-score", min_score, "a number from 0 to 1")
    if nms_iou is not None and not (math.isfinite(nms_iou) and 0.0 < nms_iou <= 1.0):
        raise bad("--nms-iou", nms_iou, "a number above 0 and at most 1")
    if threads is not None and threads < 1:
        raise bad("--threads", threads, "a whole number of at least 1")
    if chunk_size < 1:
        raise bad("--chunk-size", chunk_size, "a whole number of at least 1")
    if profile not in PROFILES:
        raise bad("--profile", profile, f"one of {PROFILES}")


def about(bundle: str | Path) -> str:
    """The bundle's model card and identity (`leukoflow predict --about`)."""
    loaded = load_bundle(bundle)
    return loaded.model_card() + f"\nBundle: {Path(bundle)}\nMANIFEST.sha256 SHA-256: {loaded.manifest_sha256}\n"


def run(inputs: Sequence[str | Path], *, bundle: str | Path, out: str | Path, expected_counts: str | Path | None = None,
        profile: str = "full", device: str | None = None, threads: int | None = None,
        min_score: float | None = None, nms_iou: float | None = None, annotate_dir: str | Path | None = None,
        coco: str | Path | None = None, chunk_size: int = 256, expected_sha256: str | None = None,
        progress: bool | None = None) -> dict[str, Any]:
    """Command entry: predict the images chunk by chunk into `out` (resuming a cut-off run); returns a summary.

    Args:
        coco: COCO JSON to write at the end (default `<out stem>.coco.json` beside `out`).
        chunk_size: images per chunk (rounded up to a multiple of the detector batch, so batches
            have the workflow's composition).
        expected_sha256: refuse a bundle whose MANIFEST.sha256 has another SHA-256.
        progress: show a progress bar (None: only on a terminal).
    """
    from tqdm import tqdm

    check_settings(min_score=min_score, nms_iou=nms_iou, threads=threads, chunk_size=chunk_size, profile=profile)
    started = time.perf_counter()
    loaded = load_bundle(bundle, expected_sha256=expected_sha256)
    defaults = loaded.spec["predict"]
    paths = image_inputs.collect_images(inputs)
    expected = image_inputs.read_expected_counts(expected_counts, list(paths)) if expected_counts else None
    out = Path(out)
    coco = Path(coco) if coco else out.with_name(out.stem + ".coco.json")
    settings = _run_settings(loaded, profile=profile, expected_counts=expected_counts, min_score=min_score,
                             nms_iou=nms_iou)
    done = _resume(out, settings)
    todo = {name: path for name, path in paths.items() if name not in done}
    predictor = Predictor(loaded, profile=profile, device=device or defaults["device"],
                          threads=threads or defaults["threads"])
    loaded_at = time.perf_counter()
    chunk = _round_up(chunk_size, int(loaded.spec["detector"]["predict"].get("batch", 1)))
    names = list(todo)
    with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", desc="predict",
              disable=None if progress is None else not progress) as bar:
        for start in range(0, len(names), chunk):
            part = {name: todo[name] for name in names[start:start + chunk]}
            rows, sizes = _predict_chunk(predictor, part, expected, min_score=min_score, nms_iou=nms_iou)
            outputs.append_rows(rows, out)
            _record(out, {"done": sizes})
            bar.update(len(part))
    finished = time.perf_counter()
    predictions = outputs.read_rows(out)
    image_sizes = _image_sizes(out, list(paths))
    coco_counts = outputs.write_coco(predictions, image_sizes, coco)
    Path(str(out) + PROGRESS_SUFFIX).unlink()
    summary = {"images": len(paths), "resumed_images": len(paths) - len(todo), "profile": profile,
               "mode": "expected_counts" if expected is not None else "threshold", **outputs.summary_counts(predictions),
               "load_seconds": round(loaded_at - started, 3),
               "ms_per_image": round(1000 * (finished - loaded_at) / max(len(todo), 1), 2),
               "images_per_second": round(len(todo) / max(finished - loaded_at, 1e-9), 2),
               "out": str(out), "coco": str(coco), "coco_annotations": coco_counts["annotations"],
               "bundle_sha256": loaded.manifest_sha256}
    if annotate_dir:
        summary["annotated_images"] = outputs.annotate(predictions, annotate_dir)
    return summary


def _predict_chunk(predictor: Predictor, paths: Mapping[str, str], expected: pd.DataFrame | None, *,
                   min_score: float | None, nms_iou: float | None) -> tuple[pd.DataFrame, list[list]]:
    chunk_expected = None if expected is None else expected[expected["name"].isin(set(paths))].reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="leukoflow-predict-") as work_dir:
        images = image_inputs.prepare_images(paths, work_dir)
        rows = predictor.predict_images(images, chunk_expected, min_score=min_score, nms_iou=nms_iou)
    sizes = [[r.name, int(r.width), int(r.height)] for r in images.itertuples(index=False)]
    return rows, sizes


def _run_settings(bundle: Bundle, **settings: Any) -> dict[str, Any]:
    return {"bundle_sha256": bundle.manifest_sha256,
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}}


def _resume(out: Path, settings: Mapping[str, Any]) -> set[str]:
    """Image ids already done by a cut-off run with the same settings; a fresh start otherwise."""
    state = Path(str(out) + PROGRESS_SUFFIX)
    if not state.is_file():
        out.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        _record(out, {"settings": dict(settings)})
        return set()
    records = _records(state)
    if not records or records[0].get("settings") != dict(settings):
        raise ValueError(f"predict: {out} belongs to an interrupted run with other settings or another bundle "
                         f"({state}); delete both files to start afresh, or repeat that run's arguments to resume")
    done = {size[0] for record in records[1:] for size in record.get("done", [])}
    if out.exists() and out.stat().st_size:
        rows = outputs.read_rows(out)
        if not rows["NAME"].isin(done).all():  # a chunk cut off after its rows, before its record
            rows[rows["NAME"].isin(done)].to_csv(out.with_suffix(out.suffix + ".tmp"), index=False)
            out.with_suffix(out.suffix + ".tmp").replace(out)
    return done


def _record(out: Path, record: Mapping[str, Any]) -> None:
    with open(str(out) + PROGRESS_SUFFIX, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _records(state: Path) -> list[dict[str, Any]]:
    records = []
    for line in state.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a record cut off mid-line: its chunk is not done
    return records


def _image_sizes(out: Path, order: Sequence[str]) -> pd.DataFrame:
    sizes = {size[0]: size for record in _records(Path(str(out) + PROGRESS_SUFFIX))[1:]
             for size in record.get("done", [])}
    return pd.DataFrame([sizes[name] for name in order], columns=["name", "width", "height"])


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // max(multiple, 1)) * max(multiple, 1))
