"""The training loop of one (model, fold) (docs/method.md §8.1).

AdamW + per-epoch cosine schedule; timm's Mixup/CutMix per batch with the winner's loss
`lam * L(y) + (1 - lam) * L(y_flipped)`; mixed precision on CUDA; the validation fold checked
`validations_per_epoch` times per epoch and the best weights kept by `scoring.selection_score`.

Determinism and resume: every epoch re-seeds the shuffle, the augmentation, Mixup (numpy's global
generator, which timm uses) and torch from (seed, fold, epoch), and the full training state is
checkpointed after each epoch. A killed run therefore resumes at its last finished epoch and, on
CPU, ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoflow.classification.augment import augment_batch, normalise, to_model_input
from leukoflow.classification.items import ItemSet, gather_pixels
from leukoflow.classification.model import BEST_FILE, atomic_save, batches, initial_model, predict_logits, resolve_device, save_best
from leukoflow.classification.scoring import batch_loss, selection_score
from leukoflow.classification.spec import ClassifierSpec, TrainSettings
from leukoflow.engine import live

LOGGER = logging.getLogger(__name__)
STATE_FILE = "state.pt"
# Independent seed streams under the run seed.
_SHUFFLE, _AUGMENT, _MIX, _TORCH, _INIT = 0, 1, 2, 3, 4


def _seed(seed: int, fold: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, fold, epoch, stream]).generate_state(1)[0])


def _seed_epoch(seed: int, fold: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    """Re-seed every generator the epoch uses (numpy's global one feeds timm's Mixup)."""
    np.random.seed(_seed(seed, fold, epoch, _MIX))
    torch.manual_seed(_seed(seed, fold, epoch, _TORCH))
    augment = torch.Generator().manual_seed(_seed(seed, fold, epoch, _AUGMENT))
    return np.random.default_rng(_seed(seed, fold, epoch, _SHUFFLE)), augment


def make_mixer(spec: ClassifierSpec):
    """timm's Mixup per batch (CutMix with lam corrected by the pasted area), or None when off."""
    from timm.data import Mixup

    if spec.mix_prob <= 0 or (spec.mixup_alpha <= 0 and spec.cutmix_alpha <= 0):
        return None
    return Mixup(mixup_alpha=spec.mixup_alpha, cutmix_alpha=spec.cutmix_alpha, prob=spec.mix_prob,
                 switch_prob=spec.cutmix_switch_prob, mode="batch", correct_lam=True, label_smoothing=0.0,
                 num_classes=spec.n_outputs)


def mix_batch(mixer, x: torch.Tensor) -> float:
    """Mix the batch in place with its reversed self; returns lam (1.0 when the batch stays clean).

    Uses Mixup's batch-mode mixing directly so the loss can be the winner's
    `lam * L(y) + (1 - lam) * L(y.flip(0))`, which differs from L(mixed y) for the focal BCE.
    """
    if mixer is None:
        return 1.0
    return float(mixer._mix_batch(x))


def _fingerprint(spec: ClassifierSpec, settings: TrainSettings, fold: int, train: ItemSet, valid: ItemSet,
                 init: Sequence[str]) -> str:
    payload = json.dumps({"spec": asdict(spec), "seed": settings.seed, "fold": fold, "init": list(init),
                          "train": train.ids.tolist(), "valid": valid.ids.tolist()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _validation_points(n_batches: int, per_epoch: int) -> set[int]:
    """Batch indices (0-based) after which to validate: evenly spaced, always the last batch."""
    per_epoch = min(per_epoch, n_batches)
    return {int(round(n_batches * (k + 1) / per_epoch)) - 1 for k in range(per_epoch)}


class FoldRun:
    """Model, optimiser and record of one fold, restored from `state.pt` when it matches."""

    def __init__(self, spec: ClassifierSpec, settings: TrainSettings, fold: int, out_dir: Path,
                 fingerprint: str, init: Sequence[str]) -> None:
        self.device = resolve_device(settings.device)
        self.use_amp = settings.amp and self.device.type == "cuda"
        torch.manual_seed(_seed(settings.seed, fold, 0, _INIT))
        self.model = initial_model(spec, init).to(self.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=spec.epochs, eta_min=0.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.fingerprint = fingerprint
        self.record: dict[str, Any] = {"epoch": 0, "best_score": -np.inf, "best_at": None, "history": [],
                                       "train_seconds": 0.0, "train_images": 0, "mixed_batches": 0, "batches": 0}
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.state_path = out_dir / STATE_FILE
        self._resume(spec, fold)

    def _resume(self, spec: ClassifierSpec, fold: int) -> None:
        if not self.state_path.exists():
            return
        saved = torch.load(self.state_path, map_location=self.device, weights_only=True)
        if saved.get("fingerprint") != self.fingerprint:
            LOGGER.warning("%s fold %d: %s belongs to another configuration; starting afresh",
                           spec.name, fold, self.state_path)
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.best_state, self.record = saved["best_model"], saved["record"]
        LOGGER.info("%s fold %d: resuming after epoch %d", spec.name, fold, self.record["epoch"])

    def checkpoint(self) -> None:
        atomic_save({"fingerprint": self.fingerprint, "model": self.model.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "best_model": self.best_state, "record": self.record},
                    self.state_path)

    def step(self, spec: ClassifierSpec, x: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(x)
        loss = batch_loss(spec, logits, target)
        if lam < 1.0:
            loss = lam * loss + (1.0 - lam) * batch_loss(spec, logits, target.flip(0))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def validate(self, spec: ClassifierSpec, settings: TrainSettings, arrays: Sequence[np.ndarray],
                 valid: ItemSet, position: float) -> None:
        logits = predict_logits(self.model, arrays, valid, batch_size=spec.batch_size, device=self.device,
                                amp=settings.amp, channels_last=settings.channels_last)
        score = selection_score(spec, valid.target, logits)
        self.record["history"].append({"epoch": position, "val_score": round(score, 6)})
        if score > self.record["best_score"]:
            self.record["best_score"], self.record["best_at"] = score, position
            self.best_state = copy.deepcopy(self.model.state_dict())


def train_fold(spec: ClassifierSpec, arrays: Sequence[np.ndarray], train: ItemSet, valid: ItemSet,
               out_dir: str | Path, *, fold: int, settings: TrainSettings, init: Sequence[str] = (),
               on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one fold; writes `state.pt` (after every epoch) and `best.pt`; returns the fold summary.

    `best.pt` holds the weights with the best `selection_score` (ties keep the earlier). An
    existing `state.pt` of the same model, seed, start weights and items is resumed.
    `init`: the fold checkpoint of the model named by `init_from` (empty: `spec.weights`).
    `on_epoch_end(epoch)` runs after each checkpoint (tests use it to simulate a kill).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not len(train):
        raise ValueError(f"classifier {spec.name!r} fold {fold}: no training items")
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(settings.deterministic, warn_only=True)
    run = FoldRun(spec, settings, fold, out_dir, _fingerprint(spec, settings, fold, train, valid, init), init)
    record, device = run.record, run.device
    log_trained_epochs(record)
    mixer = make_mixer(spec)
    executor = ThreadPoolExecutor(max_workers=1) if settings.prefetch else None
    try:
        for epoch in range(record["epoch"], spec.epochs):
            shuffle, augment = _seed_epoch(settings.seed, fold, epoch)
            epoch_batches = batches(shuffle.permutation(len(train)), spec.batch_size)
            points = _validation_points(len(epoch_batches), spec.validations_per_epoch)
            fetch = (lambda b: gather_pixels(arrays, train.source[b], train.row[b]))
            pending = executor.submit(fetch, epoch_batches[0]) if executor else None
            epoch_loss = torch.zeros((), device=device)
            for step, batch in enumerate(epoch_batches):
                started = time.perf_counter()
                pixels = pending.result() if executor else fetch(batch)
                if executor and step + 1 < len(epoch_batches):
                    pending = executor.submit(fetch, epoch_batches[step + 1])
                x = normalise(augment_batch(to_model_input(pixels, device, settings.channels_last), augment,
                                            spec.augment_strength))
                lam = mix_batch(mixer, x)
                epoch_loss += run.step(spec, x, torch.from_numpy(train.target[batch]).to(device), lam) * len(batch)
                record["train_seconds"] += time.perf_counter() - started
                record["train_images"] += len(batch)
                record["batches"] += 1
                record["mixed_batches"] += int(lam < 1.0)
                if step in points and len(valid):
                    run.validate(spec, settings, arrays, valid, round(epoch + (step + 1) / len(epoch_batches), 4))
            run.scheduler.step()
            mean_loss = float(epoch_loss) / len(train)
            record["history"].append({"epoch": epoch + 1, "train_loss": round(mean_loss, 6)})
            live.log_epoch(epoch_metrics(record, epoch + 1), step=epoch + 1)
            LOGGER.info("%s fold %d epoch %d/%d: loss %.4f, best validation %s %.4f", spec.name, fold, epoch + 1,
                        spec.epochs, mean_loss, spec.selection, record["best_score"])
            if not len(valid):
                run.best_state = copy.deepcopy(run.model.state_dict())
            record["epoch"] = epoch + 1
            run.checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        if executor:
            executor.shutdown(wait=True)
    save_best(out_dir / BEST_FILE, spec, fold, run.best_state, float(record["best_score"]), record["best_at"])
    return _fold_summary(spec, fold, train, valid, record, device)


def log_trained_epochs(record: dict[str, Any]) -> None:
    """Epochs a resumed fold trained in an earlier job, logged to this job's run too (the killed
    job's run has them), so that its live curves are whole."""
    for epoch in range(1, record["epoch"] + 1):
        live.log_epoch(epoch_metrics(record, epoch), step=epoch)


def epoch_metrics(record: dict[str, Any], epoch: int) -> dict[str, float]:
    """What the MLflow run shows live after `epoch` (1-based): its mean loss and, only when the
    validation fold was checked during it, the last check and the best so far (never a zero filler)."""
    points = [point for point in record["history"] if epoch - 1 < point["epoch"] <= epoch]
    metrics = {"train_loss": points[-1]["train_loss"]}
    checks = [point["val_score"] for point in points if "val_score" in point]
    if checks:
        best = max(point["val_score"] for point in record["history"] if "val_score" in point and point["epoch"] <= epoch)
        metrics.update(val_score=checks[-1], best_val_score=best)
    return metrics


def _fold_summary(spec: ClassifierSpec, fold: int, train: ItemSet, valid: ItemSet, record: dict[str, Any],
                  device: torch.device) -> dict[str, Any]:
    return {
        "model": spec.name, "fold": fold, "n_train": len(train), "n_valid": len(valid),
        "n_train_background": int((~train.real).sum()), "n_valid_background": int((~valid.real).sum()),
        "epochs": spec.epochs, "init_from": spec.init_from, "selection": spec.selection,
        "best_val_score": round(float(record["best_score"]), 6), "best_at_epoch": record["best_at"],
        "train_losses": [h["train_loss"] for h in record["history"] if "train_loss" in h],
        "history": record["history"],
        "mixed_batch_share": round(record["mixed_batches"] / max(record["batches"], 1), 4),
        "train_images_per_second": round(record["train_images"] / max(record["train_seconds"], 1e-9), 2),
        "device": str(device),
    }
