"""Detection stage: fold-wise white-cell detectors with ultralytics (METHOD.md §4, §7.1, §10).

The winner trained one single-class YOLOX detector per fold (detector 1 on every box, detector 2
without the noisy images and with background images), predicted each fold's validation images
out of fold and ran all fold models on the test images. We keep that structure with ultralytics
YOLO models (architecture YAML from scratch, or a local weights file; never a download):

* `export_yolo` writes one ultralytics dataset per fold: symlinks to the curated images and
  single-class label files, so 69k images are never copied;
* `train_detector` trains one fold, checkpointing every epoch. A killed training resumes from
  its last epoch (ultralytics `resume=True`). ultralytics' own checkpoint keeps only the EMA
  weights in fp16, so on top of it we save the exact training state each epoch (fp32 weights,
  optimizer, RNG streams, mosaic buffer) and restore it when resuming: the final weights then do
  not depend on the interruption (tests/test_detection.py checks this on CPU);
* `predict_images` runs one model over a list of images and returns the raw boxes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from leukoflow import boxes as boxes_lib
from leukoflow.engine import offline
from leukoflow import tables

LOGGER = logging.getLogger(__name__)
CLASS_NAME = "WBC"  # one class: the detector finds white cells, the classifiers name them
SPLITS = ("train", "val")
RESUME_STATE = "resume_state.pt"
RUN_FINGERPRINT = "leukoflow_run.json"
EPOCH_SEED_STRIDE = 100_003  # keeps (seed, epoch) pairs apart when deriving per-epoch seeds
DETECTION_COLUMNS = ["name", "x1", "y1", "x2", "y2", "score"]


# ----------------------------------------------------------------------------- export_yolo

def yolo_label_lines(boxes_xyxy: np.ndarray, width: int, height: int) -> list[str]:
    """Single-class YOLO label lines `0 cx cy w h` (normalised) for xyxy pixel boxes."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / width
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / height
    box_w = (boxes[:, 2] - boxes[:, 0]) / width
    box_h = (boxes[:, 3] - boxes[:, 1]) / height
    return [f"0 {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for x, y, w, h in zip(centre_x, centre_y, box_w, box_h)]


def fold_membership(folds: pd.DataFrame, fold: int, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """name -> split ('train' | 'val') for one fold; excluded images leave both splits (METHOD §5)."""
    kept = folds[~folds["name"].isin(set(exclude))]
    split = np.where(kept["fold"].to_numpy() == fold, "val", "train")
    return pd.DataFrame({"name": kept["name"].to_numpy(), "split": split})


def write_yolo_dataset(*, images: pd.DataFrame, boxes: pd.DataFrame, folds: pd.DataFrame, fold: int,
                       out_dir: str | Path, exclude: Iterable[str] = (),
                       backgrounds: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write the ultralytics dataset of one fold: `{train,val}/images` links, labels, `dataset.yaml`.

    Args:
        images: CURATED_IMAGES (path, width, height per name).
        boxes: CURATED_BOXES; every box of a member image becomes a label line.
        folds: FOLDS; the `fold` images are validation, the others training.
        exclude: image names left out of both splits (detector 2's noisy images).
        backgrounds: BACKGROUNDS rows (name, path, fold) added as images without labels.

    Returns:
        Summary: images, boxes and backgrounds per split.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    members = fold_membership(folds, fold, exclude).merge(
        images[["name", "path", "width", "height"]], on="name", how="left", validate="one_to_one")
    _require_known_images(members, "folds")
    if backgrounds is not None and len(backgrounds):
        extra = backgrounds.assign(split=np.where(backgrounds["fold"].to_numpy() == fold, "val", "train"))
        members = pd.concat([members, extra[["name", "split", "path", "width", "height"]]], ignore_index=True)
    if not (members["split"] == "train").any():
        raise ValueError(f"fold {fold}: no training image left after excluding {len(set(exclude))} image(s)")
    boxes_by_name = {name: group[["x1", "y1", "x2", "y2"]].to_numpy() for name, group in boxes.groupby("name")}
    summary: dict[str, Any] = {"fold": int(fold), "excluded_images": len(set(exclude))}
    for split in SPLITS:
        rows = members[members["split"] == split]
        counts = _write_split(rows, boxes_by_name, out_dir / split)
        summary.update({f"{split}_{key}": value for key, value in counts.items()})
    _write_dataset_yaml(out_dir)
    return summary


def _require_known_images(members: pd.DataFrame, source: str) -> None:
    unknown = members.loc[members["path"].isna(), "name"]
    if len(unknown):
        raise ValueError(f"{source}: {len(unknown)} image(s) missing from the curated image table, "
                         f"e.g. {unknown.iloc[0]!r}")


def _write_split(rows: pd.DataFrame, boxes_by_name: Mapping[str, np.ndarray], split_dir: Path) -> dict[str, int]:
    image_dir, label_dir = split_dir / "images", split_dir / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    n_boxes = n_empty = 0
    for name, path, width, height in rows[["name", "path", "width", "height"]].itertuples(index=False):
        (image_dir / name).symlink_to(Path(path).resolve())
        lines = yolo_label_lines(boxes_by_name.get(name, np.zeros((0, 4))), int(width), int(height))
        (label_dir / Path(name).with_suffix(".txt").name).write_text("".join(line + "\n" for line in lines))
        n_boxes += len(lines)
        n_empty += not lines
    return {"images": len(rows), "boxes": n_boxes, "empty_images": n_empty}


def _write_dataset_yaml(out_dir: Path) -> None:
    text = (f"path: {out_dir.resolve()}\ntrain: train/images\nval: val/images\n"
            f"names:\n  0: {CLASS_NAME}\n")
    (out_dir / "dataset.yaml").write_text(text)


# ----------------------------------------------------------------------------- train_detector

def resolve_device(device: str) -> str:
    """'auto' -> first visible GPU ('0', honouring CUDA_VISIBLE_DEVICES) or 'cpu'; else unchanged."""
    if device != "auto":
        return device
    return "0" if torch.cuda.is_available() else "cpu"


def import_yolo():
    """ultralytics' YOLO class, imported only after the offline switches (STACK-FACTS.md §1)."""
    offline.enforce()
    offline.disable_ultralytics_integrations()
    from ultralytics import YOLO

    return YOLO


def train_detector(*, dataset_yaml: str | Path, run_dir: str | Path, weights_out: str | Path,
                   history_out: str | Path, arch: str, init_weights: str = "",
                   train_args: Mapping[str, Any], seed: int, threads: int = 1,
                   device: str = "auto") -> dict[str, Any]:
    """Train (or resume, or reuse) one fold's detector and copy its weights and history out.

    Args:
        dataset_yaml: the fold's dataset from `write_yolo_dataset`.
        run_dir: ultralytics run folder; it survives a killed job, so a rerun resumes from
            `weights/last.pt` when that checkpoint is unfinished and the settings are unchanged.
        arch: ultralytics architecture YAML (e.g. 'yolo11n.yaml'): the model is built from scratch.
        init_weights: optional local .pt file to start from ('' = random initialisation).
        train_args: ultralytics train arguments, passed through unchanged (imgsz, epochs, batch, ...).
        threads: torch CPU threads (Snakemake's `threads`).
        device: 'auto', 'cpu' or an ultralytics device string ('0', '0,1').

    Returns:
        Summary: epochs, resumed_from_epoch, final mAP50 / mAP50-95, seconds, train images/s.
    """
    torch.set_num_threads(threads)
    run_dir, device = Path(run_dir), resolve_device(device)
    fingerprint = {"dataset": str(Path(dataset_yaml).resolve()), "dataset_digest": dataset_digest(dataset_yaml),
                   "arch": arch, "init_weights": init_weights, "train_args": dict(train_args), "seed": seed}
    started = time.perf_counter()
    state = _run_state(run_dir, fingerprint)
    resumed_from = None
    if state == "unfinished":
        resumed_from = _resume(run_dir, dataset_yaml, device, threads)
    elif state == "fresh":
        _train_fresh(run_dir, dataset_yaml, fingerprint, device, threads)
    history = pd.read_csv(run_dir / "results.csv")
    history.columns = [column.strip() for column in history.columns]
    weights = run_dir / "weights" / ("best.pt" if (run_dir / "weights" / "best.pt").exists() else "last.pt")
    Path(weights_out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, weights_out)
    history.to_csv(history_out, index=False)
    return _training_summary(history, dataset_yaml, train_args, state, resumed_from,
                             time.perf_counter() - started, device)


def dataset_digest(dataset_yaml: str | Path) -> str:
    """SHA-256 over the member images and label lines of a dataset: a re-export with other
    content (detector 2 after new noisy flags) must not resume a run made on the old one."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for label in sorted((Path(dataset_yaml).parent / split / "labels").glob("*.txt")):
            digest.update(f"{split}/{label.name}\n".encode())
            digest.update(label.read_bytes())
    return digest.hexdigest()


def _run_state(run_dir: Path, fingerprint: dict[str, Any]) -> str:
    """'finished' | 'unfinished' (resume) | 'fresh' (start over: nothing usable or settings changed)."""
    last = run_dir / "weights" / "last.pt"
    recorded = run_dir / RUN_FINGERPRINT
    if not last.exists() or not recorded.exists():
        return "fresh"
    if json.loads(recorded.read_text()) != json.loads(json.dumps(fingerprint)):
        LOGGER.info("training settings changed since %s was written: starting over", last)
        return "fresh"
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)
    except Exception as error:  # noqa: BLE001 - a checkpoint cut by the kill is restarted, not fatal
        LOGGER.warning("checkpoint %s is unreadable (%s): starting over", last, error)
        return "fresh"
    return "finished" if epoch == -1 else "unfinished"


def _train_fresh(run_dir: Path, dataset_yaml, fingerprint: dict[str, Any], device: str, threads: int) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_FINGERPRINT).write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    YOLO = import_yolo()
    model = YOLO(fingerprint["arch"])
    _add_callbacks(model, run_dir)
    args = {"workers": _workers(device, threads), "plots": False, "deterministic": True, "val": True,
            **fingerprint["train_args"]}
    model.train(data=str(dataset_yaml), project=str(run_dir.parent.resolve()), name=run_dir.name,
                exist_ok=True, device=device, seed=fingerprint["seed"],
                pretrained=fingerprint["init_weights"] or False, verbose=False, **args)


def _resume(run_dir: Path, dataset_yaml, device: str, threads: int) -> int:
    last = run_dir / "weights" / "last.pt"
    epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"]) + 1
    LOGGER.info("resuming %s at epoch %d", last, epoch + 1)
    YOLO = import_yolo()
    model = YOLO(str(last))
    _add_callbacks(model, run_dir, restore=True)
    model.train(resume=str(last), data=str(dataset_yaml), device=device, save_dir=str(run_dir.resolve()),
                workers=_workers(device, threads))
    return epoch


def _workers(device: str, threads: int) -> int:
    # NOTE: in-process loading on CPU (STACK-FACTS §1: workers do not help on 2 cores) also keeps
    # the sampler from drawing batches ahead, which exact resumption relies on.
    return 0 if device == "cpu" else threads


def _add_callbacks(model, run_dir: Path, restore: bool = False) -> None:
    model.add_callback("on_model_save", lambda trainer: save_resume_state(trainer, run_dir / RESUME_STATE))
    model.add_callback("on_fit_epoch_end", _log_epoch)
    pending = [restore]

    def start_epoch(trainer) -> None:
        if pending[0]:
            restore_resume_state(trainer, run_dir / RESUME_STATE)
            pending[0] = False
        reshuffle_for_epoch(trainer)

    model.add_callback("on_train_epoch_start", start_epoch)


def reshuffle_for_epoch(trainer) -> None:
    """Draw this epoch's image order from (seed, epoch) alone.

    NOTE: ultralytics keeps one sampler iterator across epochs, whose generator position depends
    on the whole history (torch's RandomSampler even draws an extra permutation between epochs), so
    a resumed run would see other batches. A fresh iterator from a per-epoch seed removes that.
    """
    loader = trainer.train_loader
    if loader.generator is not None:
        loader.generator.manual_seed(int(trainer.args.seed) * EPOCH_SEED_STRIDE + trainer.epoch)
        loader.reset()


def _log_epoch(trainer) -> None:
    LOGGER.info("epoch %d/%d %s", trainer.epoch + 1, trainer.epochs,
                {key: round(float(value), 5) for key, value in trainer.metrics.items()})


def save_resume_state(trainer, path: Path) -> None:
    """Everything ultralytics' fp16 EMA checkpoint leaves out, written atomically after each epoch."""
    from ultralytics.utils.torch_utils import unwrap_model

    loader = trainer.train_loader
    state = {
        "epoch": trainer.epoch,
        "model": unwrap_model(trainer.model).state_dict(),
        "ema": trainer.ema.ema.state_dict(),
        "ema_updates": trainer.ema.updates,
        "optimizer": trainer.optimizer.state_dict(),
        "rng_python": random.getstate(),
        "rng_numpy": np.random.get_state(),
        "rng_torch": torch.get_rng_state(),
        "mosaic_buffer": list(getattr(loader.dataset, "buffer", [])),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def restore_resume_state(trainer, path: Path) -> bool:
    """Load the exact state saved after epoch `start_epoch - 1`; False (plain resume) when absent."""
    from ultralytics.utils.torch_utils import unwrap_model

    if not path.exists():
        LOGGER.warning("%s missing: resuming from ultralytics' fp16 EMA checkpoint only", path)
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["epoch"] != trainer.start_epoch - 1:
        LOGGER.warning("%s is from epoch %d, not %d: plain resume", path, state["epoch"], trainer.start_epoch - 1)
        return False
    unwrap_model(trainer.model).load_state_dict(state["model"])
    trainer.ema.ema.load_state_dict(state["ema"])
    trainer.ema.updates = state["ema_updates"]
    trainer.optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng_python"])
    np.random.set_state(state["rng_numpy"])
    torch.set_rng_state(state["rng_torch"])
    if hasattr(trainer.train_loader.dataset, "buffer"):
        trainer.train_loader.dataset.buffer[:] = state["mosaic_buffer"]
    LOGGER.info("restored the exact training state of epoch %d", state["epoch"] + 1)
    return True


def _training_summary(history: pd.DataFrame, dataset_yaml, train_args: Mapping[str, Any], state: str,
                      resumed_from: int | None, seconds: float, device: str) -> dict[str, Any]:
    last = history.iloc[-1]
    n_train = sum(1 for _ in (Path(dataset_yaml).parent / "train" / "images").iterdir())
    epochs_run = len(history) if resumed_from is None else len(history) - resumed_from
    return {
        "device": device,
        "run": state,
        "resumed_from_epoch": resumed_from,
        "epochs": int(len(history)),
        "train_images": n_train,
        "map50": float(last.get("metrics/mAP50(B)", np.nan)),
        "map50_95": float(last.get("metrics/mAP50-95(B)", np.nan)),
        "train_seconds": round(seconds, 3),
        "train_images_per_second": round(n_train * epochs_run / seconds, 2) if state != "finished" else None,
        "history": history.to_dict(orient="list"),
        "train_args": dict(train_args),
    }


# ----------------------------------------------------------------------------- prediction

def predict_images(weights: str | Path, image_paths: Mapping[str, str], *, imgsz: int, conf: float,
                   iou: float, max_det: int, batch: int = 1, device: str = "auto",
                   threads: int = 1) -> pd.DataFrame:
    """Raw boxes of one model on many images (class-agnostic NMS inside ultralytics, METHOD §4.1).

    Args:
        image_paths: image name -> file path; each image is read once.
        imgsz, conf, iou, max_det: ultralytics predict arguments (winner: 512, 0.001, 0.30).

    Returns:
        One row per box: name, x1, y1, x2, y2 (xyxy px, float, not rounded), score.
    """
    torch.set_num_threads(threads)
    if not image_paths:
        return pd.DataFrame({c: pd.Series(dtype="str" if c == "name" else "float64") for c in DETECTION_COLUMNS})
    YOLO = import_yolo()
    model = YOLO(str(weights))
    names = list(image_paths)
    frames = []
    results = model.predict(source=[str(image_paths[name]) for name in names], stream=True, imgsz=imgsz,
                            conf=conf, iou=iou, max_det=max_det, agnostic_nms=True, batch=batch,
                            device=resolve_device(device), verbose=False)
    for name, result in zip(names, results):
        xyxy = result.boxes.xyxy.cpu().numpy().astype(np.float64)
        frame = pd.DataFrame(xyxy, columns=["x1", "y1", "x2", "y2"])
        frame.insert(0, "name", name)
        frame["score"] = result.boxes.conf.cpu().numpy().astype(np.float64)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["name"] = table["name"].astype("str")
    return table


def image_paths_of(images: pd.DataFrame, names: Iterable[str]) -> dict[str, str]:
    """name -> path for the given names, in the given order (error on an unknown name)."""
    path_of = images.set_index("name")["path"]
    names = list(dict.fromkeys(names))
    missing = [name for name in names if name not in path_of.index]
    if missing:
        raise ValueError(f"{len(missing)} image(s) not in the curated image table, e.g. {missing[0]!r}")
    return {name: str(path_of[name]) for name in names}


def read(path: str | Path, schema: tables.Schema) -> pd.DataFrame:
    return tables.read_table(path, schema)


def raw_detections(predicted: pd.DataFrame, detector: str, fold: int) -> pd.DataFrame:
    """predict_images output in the DETECTIONS schema."""
    frame = predicted.copy()
    frame.insert(0, "detector", detector)
    frame.insert(1, "fold", int(fold))
    frame["detector"] = frame["detector"].astype("str")
    frame["fold"] = frame["fold"].astype("int64")
    return frame[tables.DETECTIONS.column_names]


# ----------------------------------------------------------------------------- fitting to the known count

def fit_image(raw: pd.DataFrame, n: int, width: int, height: int) -> pd.DataFrame:
    """One image's boxes rounded, clipped and cut/padded to exactly n (METHOD §4.2 `fit_format`)."""
    xyxy = boxes_lib.round_and_clip(raw[["x1", "y1", "x2", "y2"]].to_numpy(), width, height)
    kept, scores, padded = boxes_lib.top_n_with_padding(xyxy, raw["score"].to_numpy(), n, width, height)
    frame = pd.DataFrame(kept, columns=["x1", "y1", "x2", "y2"])
    frame.insert(0, "rank", np.arange(n, dtype=np.int64))
    frame["score"] = scores
    frame["padded"] = padded
    return frame


def fit_oof_boxes(raw: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame, folds: pd.DataFrame,
                  detector: str) -> pd.DataFrame:
    """OOF_BOXES: every fold image's raw OOF boxes fitted to its annotated box count."""
    counts = boxes.groupby("name").size()
    size = images.set_index("name")[["width", "height"]]
    raw_by_name = dict(tuple(raw.groupby("name")))
    empty = raw.iloc[:0]
    frames = []
    for name, fold in folds[["name", "fold"]].itertuples(index=False):
        n = int(counts.get(name, 0))
        if n == 0:
            continue
        fitted = fit_image(raw_by_name.get(name, empty), n, int(size.at[name, "width"]), int(size.at[name, "height"]))
        fitted.insert(0, "name", name)
        fitted.insert(0, "fold", int(fold))
        frames.append(fitted)
    table = pd.concat(frames, ignore_index=True) if frames else tables.empty_frame(tables.OOF_BOXES)
    table.insert(0, "detector", detector)
    return _typed(table, tables.OOF_BOXES)


def _typed(frame: pd.DataFrame, schema: tables.Schema) -> pd.DataFrame:
    kinds = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}
    frame = frame[schema.column_names]
    return frame.astype({column.name: kinds[column.dtype] for column in schema.columns})


# ----------------------------------------------------------------------------- OOF scoring

def truth_table(boxes: pd.DataFrame) -> pd.DataFrame:
    """CURATED_BOXES as metric truth; the train.csv row is the pseudo trustii_id (METHOD §4.2)."""
    ordered = boxes.sort_values(["name", "row"], kind="stable")
    return pd.DataFrame({"trustii_id": ordered["row"].to_numpy(), "NAME": ordered["name"].to_numpy(dtype=object),
                         "x1": ordered["x1"].to_numpy(), "y1": ordered["y1"].to_numpy(),
                         "x2": ordered["x2"].to_numpy(), "y2": ordered["y2"].to_numpy(),
                         "class": ordered["label"].to_numpy(dtype=object)})


def as_submission(fitted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Pair the k-th fitted box of an image with its k-th truth id (pairing does not change GIoU, §10.3).

    The class is the truth class: only the GIoU part of the score is meaningful here.
    """
    truth = truth.assign(rank=truth.groupby("NAME").cumcount())
    paired = truth[["trustii_id", "NAME", "class", "rank"]].merge(
        fitted.rename(columns={"name": "NAME"})[["NAME", "rank", "x1", "y1", "x2", "y2"]], on=["NAME", "rank"])
    return paired[["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]]


def full_image_submission(truth: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The trivial baseline: every cell answered with the full-image box."""
    size = images.set_index("name")[["width", "height"]]
    width = size["width"].reindex(truth["NAME"]).to_numpy()
    height = size["height"].reindex(truth["NAME"]).to_numpy()
    return truth.assign(x1=0.0, y1=0.0, x2=np.maximum(width - 1, 1).astype(float),
                        y2=np.maximum(height - 1, 1).astype(float))


def evaluate_oof(fitted: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame) -> dict[str, Any]:
    """Mean rescaled GIoU (official matching) of the OOF boxes and of the full-image baseline, per fold too."""
    from leukoflow import metric

    truth = truth_table(boxes[boxes["name"].isin(set(fitted["name"]))])
    oof = metric.score(truth, as_submission(fitted, truth)).per_row
    baseline = metric.score(truth, full_image_submission(truth, images)).per_row
    fold_of = fitted.drop_duplicates("name").set_index("name")["fold"]
    per_fold = oof.groupby(oof["NAME"].map(fold_of))["rescaled_giou"].mean()
    return {
        "oof_mean_rescaled_giou": float(oof["rescaled_giou"].mean()),
        "full_image_baseline_giou": float(baseline["rescaled_giou"].mean()),
        "oof_gain_over_baseline": float(oof["rescaled_giou"].mean() - baseline["rescaled_giou"].mean()),
        "per_fold_mean_rescaled_giou": {str(int(k)): float(v) for k, v in per_fold.items()},
        "cells": int(len(oof)),
        "padded_boxes": int(fitted["padded"].sum()),
        "giou_histogram": np.histogram(oof["giou"].to_numpy(), bins=10, range=(-1, 1))[0].tolist(),
    }


# ----------------------------------------------------------------------------- test boxes

def fuse_test_boxes(raw: pd.DataFrame, test: pd.DataFrame, images: pd.DataFrame, *, wbf_iou: float,
                    wbf_skip: float) -> pd.DataFrame:
    """TEST_BOXES: per image, every fold's boxes fused as one list (WBF), top-N by the test.csv count.

    Test rows whose image is not a kept test image (quarantined, unreadable) get the full-image box
    of the size recorded (a 2x2 box when unknown) with source 'unreadable'.
    """
    size = images.set_index("name")[["width", "height"]]
    usable = set(images.loc[(images["split"] == "test") & images["keep"], "name"])
    raw_by_name = dict(tuple(raw.groupby("name")))
    frames = []
    for name, rows in test.groupby("name", sort=False):
        width, height = (int(v) for v in size.loc[name]) if name in size.index else (0, 0)
        fitted = _fused_for_image(raw_by_name.get(name, raw.iloc[:0]), len(rows), width, height,
                                  wbf_iou, wbf_skip) if name in usable else None
        frames.append(_pair_with_rows(rows, fitted, width, height))
    table = pd.concat(frames).sort_values("row", kind="stable") if frames else tables.empty_frame(tables.TEST_BOXES)
    return _typed(table.reset_index(drop=True), tables.TEST_BOXES)


def _fused_for_image(raw: pd.DataFrame, n: int, width: int, height: int, wbf_iou: float,
                     wbf_skip: float) -> pd.DataFrame:
    fused_norm, scores = boxes_lib.weighted_boxes_fusion(
        boxes_lib.normalise(raw[["x1", "y1", "x2", "y2"]].to_numpy(), width, height), raw["score"].to_numpy(),
        iou_threshold=wbf_iou, skip_threshold=wbf_skip)
    fused = pd.DataFrame(boxes_lib.denormalise(fused_norm, width, height), columns=["x1", "y1", "x2", "y2"])
    fused["score"] = scores
    return fit_image(fused, n, width, height)


def _pair_with_rows(rows: pd.DataFrame, fitted: pd.DataFrame | None, width: int, height: int) -> pd.DataFrame:
    out = rows[["row", "trustii_id", "name"]].reset_index(drop=True)
    if fitted is None:
        box = boxes_lib.full_image_box(max(width, 2), max(height, 2))
        return out.assign(x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=0.0, source="unreadable")
    out[["x1", "y1", "x2", "y2", "score"]] = fitted[["x1", "y1", "x2", "y2", "score"]].to_numpy()
    out["source"] = np.where(fitted["padded"].to_numpy(), "padded", "detected")
    return out


# ----------------------------------------------------------------------------- rule entries (paths in, summary out)

def export_yolo(*, images: str, boxes: str, folds: str, n_folds: int, datasets: str, noisy: str | None = None,
                backgrounds: str | None = None) -> dict[str, Any]:
    """Rule entry: every fold's dataset under `datasets/fold{k}`; with `noisy`/`backgrounds` (detector 2)
    the cleaned variant."""
    from leukoflow.detection import noisy as noisy_lib

    exclude = noisy_lib.excluded_images(read(noisy, tables.NOISY_FLAGS)) if noisy else []
    inputs = {"images": read(images, tables.CURATED_IMAGES), "boxes": read(boxes, tables.CURATED_BOXES),
              "folds": read(folds, tables.FOLDS), "exclude": exclude,
              "backgrounds": read(backgrounds, tables.BACKGROUNDS) if backgrounds else None}
    per_fold = {str(fold): write_yolo_dataset(fold=fold, out_dir=Path(datasets) / f"fold{fold}", **inputs)
                for fold in range(n_folds)}
    return {"excluded_images": len(exclude), "folds": per_fold}


def predict_oof(*, weights: str, images: str, folds: str, fold: int, detector: str, raw: str,
                predict: Mapping[str, Any], device: str, threads: int) -> dict[str, Any]:
    """Rule entry: the fold model on every image of its validation fold (noisy ones included)."""
    fold_table = read(folds, tables.FOLDS)
    names = fold_table.loc[fold_table["fold"] == int(fold), "name"]
    started = time.perf_counter()
    predicted = predict_images(weights, image_paths_of(read(images, tables.CURATED_IMAGES), names),
                               device=device, threads=threads, **predict)
    seconds = time.perf_counter() - started
    tables.write_table(raw_detections(predicted, detector, int(fold)), raw, tables.DETECTIONS)
    return {"images": int(len(names)), "boxes": int(len(predicted)), "predict_seconds": round(seconds, 3),
            "ms_per_image": round(1000 * seconds / max(len(names), 1), 2)}


def fit_oof(*, raw: list[str], training: list[str], images: str, boxes: str, folds: str, detector: str,
            oof: str) -> dict[str, Any]:
    """Rule entry: OOF boxes fitted to the cell counts, scored against the full-image baseline."""
    from leukoflow.engine.runtime import read_json

    box_table, image_table = read(boxes, tables.CURATED_BOXES), read(images, tables.CURATED_IMAGES)
    detections = pd.concat([read(path, tables.DETECTIONS) for path in raw], ignore_index=True)
    fitted = fit_oof_boxes(detections, box_table, image_table, read(folds, tables.FOLDS), detector)
    tables.write_table(fitted, oof, tables.OOF_BOXES)
    trained = [read_json(path) for path in training]
    summary = evaluate_oof(fitted, box_table, image_table)
    summary["per_fold"] = {str(k): {"map50": t["map50"], "map50_95": t["map50_95"],
                                    "mean_rescaled_giou": summary["per_fold_mean_rescaled_giou"].get(str(k)),
                                    "train_seconds": t["train_seconds"], "resumed_from_epoch": t["resumed_from_epoch"],
                                    "history": t["history"]}
                           for k, t in enumerate(trained)}
    summary["detector"] = detector
    return summary


def predict_test_boxes(*, weights: list[str], images: str, test: str, raw: str, boxes: str, detector: str,
                       predict: Mapping[str, Any], device: str, threads: int, wbf_iou: float,
                       wbf_skip: float) -> dict[str, Any]:
    """Rule entry: every fold model on each unique test image once, WBF, top-N by the known count."""
    image_table, test_table = read(images, tables.CURATED_IMAGES), read(test, tables.INGEST_TEST)
    usable = image_table[(image_table["split"] == "test") & image_table["keep"]]
    names = [name for name in dict.fromkeys(test_table["name"]) if name in set(usable["name"])]
    started = time.perf_counter()
    frames = [raw_detections(predict_images(path, image_paths_of(image_table, names), device=device,
                                            threads=threads, **predict), detector, fold)
              for fold, path in enumerate(weights)]
    seconds = time.perf_counter() - started
    detections = pd.concat(frames, ignore_index=True)
    tables.write_table(detections, raw, tables.DETECTIONS)
    fused = fuse_test_boxes(detections, test_table, image_table, wbf_iou=wbf_iou, wbf_skip=wbf_skip)
    tables.write_table(fused, boxes, tables.TEST_BOXES)
    return {"test_boxes": int(len(fused)), "test_rows": int(len(test_table)), "test_images": len(names),
            "raw_boxes": int(len(detections)), "sources": fused["source"].value_counts().to_dict(),
            "predict_seconds": round(seconds, 3),
            "ms_per_image_per_model": round(1000 * seconds / max(len(names) * len(weights), 1), 2)}


def summarize_detection(*, detectors: list[str], exports: list[str], predictions: list[str], noisy: str,
                        backgrounds: str, test: str, crops: str, detector_names: list[str],
                        test_detector: str) -> dict[str, Any]:
    """Rule entry: the stage's headline figures in one JSON (read by acceptance checks and tracking)."""
    from leukoflow.engine.runtime import read_json

    per_detector = {name: read_json(path) for name, path in zip(detector_names, detectors)}
    for summary in per_detector.values():
        for fold in summary["per_fold"].values():
            fold.pop("history", None)
        summary.pop("giou_histogram", None)
    head = per_detector[test_detector]
    noisy_summary, background_summary = read_json(noisy), read_json(backgrounds)
    test_summary, crop_summary = read_json(test), read_json(crops)
    return {
        "oof_mean_rescaled_giou": head["oof_mean_rescaled_giou"],
        "full_image_baseline_giou": head["full_image_baseline_giou"],
        "baseline_mean_rescaled_giou": head["full_image_baseline_giou"],
        "oof_gain_over_baseline": head["oof_gain_over_baseline"],
        "detectors": per_detector,
        **{key: value for key, value in noisy_summary.items() if key.startswith("noisy")},
        "n_backgrounds": background_summary["n_backgrounds"],
        "n_crops": crop_summary["n_crops"],
        "test_boxes": test_summary["test_boxes"],
        "test_rows": test_summary["test_rows"],
        "timings_seconds": _stage_timings(exports + predictions + [noisy, backgrounds, test, crops]),
        "train_seconds": {name: {k: f["train_seconds"] for k, f in s["per_fold"].items()}
                          for name, s in per_detector.items()},
        "test_ms_per_image_per_model": test_summary["ms_per_image_per_model"],
    }


def _stage_timings(summaries: list[str]) -> dict[str, float]:
    """Seconds per job, keyed by its summary path below results/ (e.g. 'detection/det1/fold0/oof_summary')."""
    from leukoflow.engine.runtime import read_json

    return {str(Path(path).with_suffix("")).split("results/", 1)[-1]: read_json(path).get("seconds")
            for path in summaries}
