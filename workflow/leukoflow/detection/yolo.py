"""Fold-wise white-cell detectors with ultralytics: training, resumption and prediction.

The winner trained one single-class YOLOX detector per fold (detector 1 on every box, detector 2
without the noisy images and with background images), predicted each fold's validation images
out of fold and ran all fold models on the test images. We keep that structure with ultralytics
YOLO models (architecture YAML from scratch, or a local weights file; never a download):

* `train_detector` trains one fold, checkpointing every epoch. A killed training resumes from
  its last epoch (ultralytics `resume=True`). ultralytics' own checkpoint keeps only the EMA
  weights in fp16, so on top of it we save the exact training state each epoch (fp32 weights,
  optimizer, RNG streams, mosaic buffer) and restore it when resuming: the final weights then do
  not depend on the interruption (tests/test_detection.py checks this on CPU);
* `predict_images` runs one model over a list of images and returns the raw boxes (`predict_oof`
  on a fold's validation images, `predict_test_boxes` with every fold model on the test images).
Datasets are written by `datasets`, boxes fitted to the challenge format by `fitting`.
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

from leukoflow import tables
from leukoflow.detection.datasets import SPLITS
from leukoflow.detection.fitting import fuse_test_boxes
from leukoflow.engine import live, offline
from leukoflow.engine.devices import resolve_device
from leukoflow.engine.runtime import tracked

LOGGER = logging.getLogger(__name__)
RESUME_STATE = "resume_state.pt"
RUN_FINGERPRINT = "leukoflow_run.json"
EPOCH_SEED_STRIDE = 100_003  # keeps (seed, epoch) pairs apart when deriving per-epoch seeds
DETECTION_COLUMNS = ["name", "x1", "y1", "x2", "y2", "score"]


# ----------------------------------------------------------------------------- train_detector

def import_yolo():
    """ultralytics' YOLO class, imported only after the offline switches (docs/hardware.md §1)."""
    offline.enforce()
    offline.disable_ultralytics_integrations()
    from ultralytics import YOLO

    return YOLO


@tracked
def train_detector(*, datasets: str, fold: str, run_dir: str, weights: str, history: str, arch: str,
                   init_weights: str, train_args: Mapping[str, Any], seed: int, device: str,
                   threads: int) -> dict[str, Any]:
    """Rule entry: one fold's detector on its dataset `datasets/fold{fold}` (see `fit_detector`)."""
    return fit_detector(dataset_yaml=Path(datasets) / f"fold{int(fold)}" / "dataset.yaml", run_dir=run_dir,
                        weights_out=weights, history_out=history, arch=arch, init_weights=init_weights,
                        train_args=train_args, seed=seed, threads=threads, device=device)


def fit_detector(*, dataset_yaml: str | Path, run_dir: str | Path, weights_out: str | Path,
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
    validated_every_epoch = train_args.get("val", True)
    if state == "unfinished":
        resumed_from = _resume(run_dir, dataset_yaml, device, threads, validated_every_epoch)
    elif state == "fresh":
        _train_fresh(run_dir, dataset_yaml, fingerprint, device, threads)
    history = without_skipped_validation(read_history(run_dir), validated_every_epoch=validated_every_epoch)
    if state == "finished":
        log_trained_epochs(history)
    weights = run_dir / "weights" / ("best.pt" if (run_dir / "weights" / "best.pt").exists() else "last.pt")
    Path(weights_out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, weights_out)
    history.to_csv(history_out, index=False)
    return _training_summary(history, dataset_yaml, train_args, state, resumed_from,
                             time.perf_counter() - started, device)


def without_skipped_validation(history: pd.DataFrame, *, validated_every_epoch: bool) -> pd.DataFrame:
    """ultralytics' results.csv with empty validation cells where validation did not run.

    ultralytics writes zeros (or the previous values) for a skipped validation; with `val: false`
    it validates the last epoch only (and the epoch an early stop ends on, also the last).
    """
    if validated_every_epoch or history.empty:
        return history
    history = history.copy()
    columns = validation_columns(history)
    history[columns] = history[columns].astype("float64")
    history.loc[history.index[:-1], columns] = np.nan
    return history


def read_history(run_dir: Path) -> pd.DataFrame:
    """ultralytics' results.csv of a run: one row per trained epoch."""
    history = pd.read_csv(run_dir / "results.csv")
    history.columns = [column.strip() for column in history.columns]
    return history


def validation_columns(history: pd.DataFrame) -> list[str]:
    return [column for column in history.columns if column.startswith(("metrics/", "val/"))]


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
    if epoch == -1:
        return "finished"
    if _resume_state_epoch(run_dir / RESUME_STATE) != epoch:
        # NOTE: a kill between ultralytics' last.pt and our exact state leaves them an epoch apart;
        # ultralytics' own resume would then draw other batches than an uninterrupted run.
        LOGGER.warning("no exact training state for epoch %d of %s: starting over", epoch + 1, last)
        return "fresh"
    return "unfinished"


def _resume_state_epoch(path: Path) -> int | None:
    """The epoch of the exact training state saved beside last.pt, None when absent or unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001 - absent or cut by the kill: no exact resume possible
        return None


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


def _resume(run_dir: Path, dataset_yaml, device: str, threads: int, validated_every_epoch: bool) -> int:
    last = run_dir / "weights" / "last.pt"
    epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"]) + 1
    LOGGER.info("resuming %s at epoch %d", last, epoch + 1)
    trained = read_history(run_dir)
    trained = trained[trained["epoch"] <= epoch]
    # an unfinished run without `val` every epoch has validated none of them yet
    log_trained_epochs(trained if validated_every_epoch else trained.drop(columns=validation_columns(trained)))
    YOLO = import_yolo()
    model = YOLO(str(last))
    _add_callbacks(model, run_dir, restore=True)
    model.train(resume=str(last), data=str(dataset_yaml), device=device, save_dir=str(run_dir.resolve()),
                workers=_workers(device, threads))
    return epoch


def log_trained_epochs(history: pd.DataFrame) -> None:
    """Epochs trained by an earlier job (resumed or reused run), logged to this job's run as
    `EpochLog` logs them live, so that its curves are whole; empty cells (no validation) left out."""
    for row in history.drop(columns=["time"], errors="ignore").to_dict(orient="records"):
        epoch = int(row.pop("epoch"))
        live.log_epoch({key: round(float(value), 5) for key, value in row.items() if pd.notna(value)}, step=epoch)


def _workers(device: str, threads: int) -> int:
    # NOTE: in-process loading on CPU (docs/hardware.md §1: workers do not help on 2 cores) also keeps
    # the sampler from drawing batches ahead, which exact resumption relies on.
    return 0 if device == "cpu" else threads


def _add_callbacks(model, run_dir: Path, restore: bool = False) -> None:
    model.add_callback("on_model_save", lambda trainer: save_resume_state(trainer, run_dir / RESUME_STATE))
    epoch_log = EpochLog()
    model.add_callback("on_train_epoch_end", epoch_log.trained)
    model.add_callback("on_val_end", epoch_log.validated)
    model.add_callback("on_fit_epoch_end", epoch_log.fit_epoch_end)
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


class EpochLog:
    """Each trained epoch's losses, learning rates and (only when it ran) validation, to the log and
    live to the job's MLflow run.

    NOTE: ultralytics fills `trainer.metrics` with zeros before the first validation and keeps the
    last values when an epoch skips it (`val: false`), so whether validation ran is taken from its
    `on_val_end` event. Its closing check of best.pt (`final_eval`) also fires `on_fit_epoch_end`,
    without a trained epoch; that one is left to the job's summary.
    """

    def __init__(self) -> None:
        self.epoch_trained = self.epoch_validated = False

    def trained(self, trainer) -> None:
        self.epoch_trained, self.epoch_validated = True, False

    def validated(self, validator) -> None:
        self.epoch_validated = True

    def fit_epoch_end(self, trainer) -> None:
        if not self.epoch_trained:
            return
        losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}
        metrics = {**losses, **trainer.lr}
        if self.epoch_validated:
            metrics.update(trainer.metrics)
        metrics = {key: round(float(value), 5) for key, value in metrics.items()}
        LOGGER.info("epoch %d/%d %s", trainer.epoch + 1, trainer.epochs, metrics)
        live.log_epoch(metrics, step=trainer.epoch + 1)
        self.epoch_trained = self.epoch_validated = False


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


def restore_resume_state(trainer, path: Path) -> None:
    """Load the exact state saved after epoch `start_epoch - 1` (`_run_state` resumes only when it exists)."""
    from ultralytics.utils.torch_utils import unwrap_model

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["epoch"] != trainer.start_epoch - 1:
        raise RuntimeError(f"{path} is from epoch {state['epoch']}, resuming needs epoch {trainer.start_epoch - 1}")
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
        "history": history.dropna(axis="columns").to_dict(orient="list"),  # curves: columns with every epoch
        "validation": {"epoch": int(last["epoch"]), **last[validation_columns(history)].to_dict()},
        "train_args": dict(train_args),
    }


# ----------------------------------------------------------------------------- prediction

def predict_images(weights: str | Path, image_paths: Mapping[str, str], *, imgsz: int, conf: float,
                   iou: float, max_det: int, batch: int = 1, device: str = "auto",
                   threads: int = 1) -> pd.DataFrame:
    """Raw boxes of one model on many images (class-agnostic NMS inside ultralytics, docs/method.md §4.1).

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


def raw_detections(predicted: pd.DataFrame, detector: str, fold: int) -> pd.DataFrame:
    """predict_images output in the DETECTIONS schema."""
    frame = predicted.copy()
    frame.insert(0, "detector", detector)
    frame.insert(1, "fold", int(fold))
    frame["detector"] = frame["detector"].astype("str")
    frame["fold"] = frame["fold"].astype("int64")
    return frame[tables.DETECTIONS.column_names]

@tracked
def predict_oof(*, weights: str, images: str, folds: str, fold: int, detector: str, raw: str,
                predict: Mapping[str, Any], device: str, threads: int) -> dict[str, Any]:
    """Rule entry: the fold model on every image of its validation fold (noisy ones included)."""
    fold_table = tables.read_table(folds, tables.FOLDS)
    names = fold_table.loc[fold_table["fold"] == int(fold), "name"]
    started = time.perf_counter()
    predicted = predict_images(weights, image_paths_of(tables.read_table(images, tables.CURATED_IMAGES), names),
                               device=device, threads=threads, **predict)
    seconds = time.perf_counter() - started
    tables.write_table(raw_detections(predicted, detector, int(fold)), raw, tables.DETECTIONS)
    return {"images": int(len(names)), "boxes": int(len(predicted)), "predict_seconds": round(seconds, 3),
            "ms_per_image": round(1000 * seconds / max(len(names), 1), 2)}



@tracked
def predict_test_boxes(*, weights: list[str], images: str, test: str, raw: str, boxes: str, detector: str,
                       predict: Mapping[str, Any], device: str, threads: int, wbf_iou: float,
                       wbf_skip: float) -> dict[str, Any]:
    """Rule entry: every fold model on each unique test image once, WBF, top-N by the known count."""
    image_table, test_table = tables.read_table(images, tables.CURATED_IMAGES), tables.read_table(test, tables.INGEST_TEST)
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


