"""Classification stage: fold-wise timm classifiers on cell crops and on whole images (METHOD.md §8-§9).

Two kinds of model share one training loop:

* `multiclass`: one crop -> one of the 23 classes (a 24th `Background` class when the model is
  trained with random crops of the background images); soft-target cross-entropy;
* `multilabel`: one whole image -> 23 class labels (+ `Background`), focal BCE.

Recipe (the winner's, §8.1): `timm.create_model(backbone, num_classes=0)` + `nn.Linear` head
(xavier-uniform weight, zero bias); squashed square Lanczos resize (done once, `crop_cache`);
flips/rot90, shift-scale-rotate, colour, blur and coarse dropout augmentation (batched on the
training device, scaled by `augment_strength`); ImageNet normalisation; timm's Mixup/CutMix per
batch with loss `lam * L(y) + (1 - lam) * L(y_flipped)`; AdamW + per-epoch cosine schedule; mixed
precision on CUDA; the validation fold's macro F1 checked `validations_per_epoch` times per epoch
and the best weights kept; OOF logits of the best weights without TTA; test logits per fold with
optional hflip TTA, averaged over folds (§9.1).

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
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from leukoflow import tables
from leukoflow.constants import BACKGROUND_CLASS, CLASSES

LOGGER = logging.getLogger(__name__)
KINDS = ("multiclass", "multilabel")
LOSSES = ("cross_entropy", "focal_bce")
TTA_MODES = ("none", "hflip")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
# Independent seed streams under the run seed.
_SHUFFLE, _AUGMENT, _MIX, _TORCH, _INIT = 0, 1, 2, 3, 4


# ----------------------------------------------------------------------------- model specification

@dataclass(frozen=True)
class ClassifierSpec:
    """One entry of `classifiers.models` in the config; defaults are the winner's recipe."""

    name: str
    backbone: str
    kind: str = "multiclass"
    img_size: int = 224
    background: bool = False
    loss: str = "cross_entropy"
    focal_alpha: float = 1.0
    focal_gamma: float = 2.0
    epochs: int = 32
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    mix_prob: float = 0.5
    cutmix_switch_prob: float = 0.5
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    augment_strength: float = 1.0
    tta: str = "hflip"
    weights: str = ""
    validations_per_epoch: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} not in {KINDS}")
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} not in {LOSSES}")
        if self.tta not in TTA_MODES:
            problems.append(f"tta {self.tta!r} not in {TTA_MODES}")
        for key in ("img_size", "epochs", "batch_size", "validations_per_epoch"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1")
        if problems:
            raise ValueError(f"classifier {self.name!r}: " + "; ".join(problems))

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> ClassifierSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"classifier {entry.get('name')!r}: unknown key(s) {unknown}")
        return cls(**entry)

    @property
    def n_outputs(self) -> int:
        return len(CLASSES) + int(self.background)

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES) + ([BACKGROUND_CLASS] if self.background else [])

    @property
    def cache_source(self) -> str:
        return "crops" if self.kind == "multiclass" else "images"

    @property
    def background_source(self) -> str:
        return "background_crops" if self.kind == "multiclass" else "background_images"


# ----------------------------------------------------------------------------- input tables

def crops_from_ground_truth(boxes: pd.DataFrame, folds: pd.DataFrame, images: pd.DataFrame, *,
                            margin: float = 16.0) -> pd.DataFrame:
    """Development/testing fallback: CROPS rows cut from the ground-truth boxes, not detector 2.

    The winner trained on detector-2 out-of-fold boxes matched to the ground truth (§7.2); this
    fallback lets the classifiers run before (or without) detection. Each box is expanded by
    `margin` px per side and clipped to the image; k in `crop_id` is the box's rank on its image
    in train.csv row order. Every box's image must have a fold.
    """
    sizes = images.set_index("name")[["width", "height"]]
    fold_of = folds.set_index("name")["fold"]
    missing = sorted(set(boxes["name"]) - set(fold_of.index))
    if missing:
        raise ValueError(f"ground-truth crops: {len(missing)} boxed image(s) have no fold, e.g. {missing[:3]}")
    frame = boxes.sort_values("row", kind="stable").reset_index(drop=True)
    width = sizes.loc[frame["name"], "width"].to_numpy(float)
    height = sizes.loc[frame["name"], "height"].to_numpy(float)
    rank = frame.groupby("name").cumcount().to_numpy()
    return pd.DataFrame({
        "crop_id": frame["name"].astype(str) + "#" + pd.Series(rank).astype(str),
        "name": frame["name"].astype(str),
        "split": "train",
        "fold": fold_of.loc[frame["name"]].to_numpy().astype("int64"),
        "x1": np.clip(frame["x1"].to_numpy(float) - margin, 0, width),
        "y1": np.clip(frame["y1"].to_numpy(float) - margin, 0, height),
        "x2": np.clip(frame["x2"].to_numpy(float) + margin, 0, width),
        "y2": np.clip(frame["y2"].to_numpy(float) + margin, 0, height),
        "score": 1.0,
        "label": frame["label"].astype(str),
        "class_idx": frame["class_idx"].astype("int64"),
        "trustii_id": np.full(len(frame), -1, dtype="int64"),
        "source": "ground_truth",
    })


def image_labels(boxes: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per training image of FOLDS: fold and the '|'-joined sorted class indices of its boxes."""
    known = boxes[boxes["class_idx"] >= 0]
    labels = known.groupby("name")["class_idx"].agg(lambda v: "|".join(str(i) for i in sorted(set(v))))
    frame = folds[["name", "fold"]].copy()
    frame["labels"] = frame["name"].map(labels).fillna("").astype(str)
    return frame.reset_index(drop=True)


def labels_to_multi_hot(labels: Sequence[str], n_outputs: int) -> np.ndarray:
    hot = np.zeros((len(labels), n_outputs), dtype=np.float32)
    for row, text in enumerate(labels):
        for index in filter(None, str(text).split("|")):
            hot[row, int(index)] = 1.0
    return hot


# ----------------------------------------------------------------------------- fold data

@dataclass
class ItemSet:
    """Items of one role: which cache array and row, dense targets, ids for the logits tables."""

    source: np.ndarray  # int, index into FoldData.arrays
    row: np.ndarray  # int, row in that array
    target: np.ndarray  # float32 [n, K] (one-hot for multiclass)
    ids: np.ndarray  # str
    names: np.ndarray  # str
    folds: np.ndarray  # int
    trustii: np.ndarray  # int
    real: np.ndarray  # bool: a crop/image of the dataset (False: a background item)
    role: np.ndarray  # str: train | valid | test (cache index role)

    def __len__(self) -> int:
        return len(self.row)

    def subset(self, mask: np.ndarray) -> ItemSet:
        return ItemSet(*(getattr(self, f.name)[mask] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[ItemSet]) -> ItemSet:
        return ItemSet(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ItemSet)))


def main_items(spec: ClassifierSpec, index: pd.DataFrame, truth: pd.DataFrame) -> tuple[ItemSet, dict[str, int]]:
    """Items of the main cache (crops or whole images) with their targets.

    `truth`: for crops, the CROPS table; for images, `image_labels` (name, fold, labels).
    Training crops without a class (`class_idx` -1: detector boxes without a ground-truth match)
    are left out of training and OOF, and counted in the returned skip counts.
    """
    if spec.kind == "multiclass":
        table = truth.set_index("crop_id").loc[index["id"]]
        class_idx = table["class_idx"].to_numpy()
        labels = np.where(class_idx >= 0, class_idx.astype(str), "")
        trustii = table["trustii_id"].to_numpy().astype("int64")
    else:
        labels = truth.set_index("name")["labels"].reindex(index["id"]).fillna("").to_numpy()
        trustii = np.full(len(index), -1, dtype="int64")
    items = ItemSet(
        source=np.zeros(len(index), dtype="int64"), row=np.arange(len(index)),
        target=labels_to_multi_hot(labels, spec.n_outputs), ids=index["id"].to_numpy(str),
        names=index["name"].to_numpy(str), folds=index["fold"].to_numpy("int64"), trustii=trustii,
        real=np.ones(len(index), dtype=bool), role=index["role"].to_numpy(str),
    )
    is_test = index["role"].to_numpy() == "test"
    unlabelled = (~is_test) & (items.target.sum(1) == 0) & (spec.kind == "multiclass")
    if unlabelled.any():
        LOGGER.warning("%s: %d training crop(s) without a class are not used", spec.name, int(unlabelled.sum()))
    items = items.subset(~unlabelled)
    return items, {"unlabelled_crops_skipped": int(unlabelled.sum())}


def background_items(spec: ClassifierSpec, index: pd.DataFrame, source: int) -> ItemSet:
    """Background cache rows, target = the Background class (index 23)."""
    target = np.zeros((len(index), spec.n_outputs), dtype=np.float32)
    target[:, len(CLASSES)] = 1.0
    return ItemSet(
        source=np.full(len(index), source, dtype="int64"), row=np.arange(len(index)), target=target,
        ids=index["id"].to_numpy(str), names=index["name"].to_numpy(str),
        folds=index["fold"].to_numpy("int64"), trustii=np.full(len(index), -1, dtype="int64"),
        real=np.zeros(len(index), dtype=bool), role=index["role"].to_numpy(str),
    )


def split_fold(main: ItemSet, fold: int, background: ItemSet | None = None) -> tuple[ItemSet, ItemSet]:
    """Training items (other folds) and validation items (this fold) of one fold.

    Background crops: the `train` crops of other folds train, the `valid` crop of this fold
    validates. Whole background images (role `train` only): other folds train, this fold validates.
    """
    labelled = main.role != "test"
    train = [main.subset(labelled & (main.folds != fold))]
    valid = [main.subset(labelled & (main.folds == fold))]
    if background is not None and len(background):
        valid_role = "valid" if (background.role == "valid").any() else "train"
        train.append(background.subset((background.role == "train") & (background.folds != fold)))
        valid.append(background.subset((background.role == valid_role) & (background.folds == fold)))
    return ItemSet.concat(train), ItemSet.concat(valid)


def gather_pixels(arrays: Sequence[np.ndarray], source: np.ndarray, row: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] of the given items, read from the (memory-mapped) cache arrays."""
    size = arrays[0].shape[1]
    out = np.empty((len(row), size, size, 3), dtype=np.uint8)
    for which in np.unique(source):
        mask = source == which
        rows = row[mask]
        order = np.argsort(rows, kind="stable")  # sequential reads from the memmap
        picked = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        picked[order] = arrays[which][rows[order]]
        out[mask] = picked
    return out


# ----------------------------------------------------------------------------- model

class Classifier(nn.Module):
    """timm backbone without its head (default pooling) + a linear head, as the winner."""

    def __init__(self, backbone: nn.Module, n_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, n_outputs)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(spec: ClassifierSpec) -> Classifier:
    """The backbone from timm, ImageNet weights only from a local file (never the hub)."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if spec.weights:
        if not Path(spec.weights).is_file():
            raise FileNotFoundError(f"classifier {spec.name!r}: weights file {spec.weights} does not exist "
                                    "(put the timm checkpoint there; downloads are disabled)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(Path(spec.weights).resolve())})
    return Classifier(timm.create_model(spec.backbone, **kwargs), spec.n_outputs)


# ----------------------------------------------------------------------------- augmentation

def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """The winner's `light_augmentation_train` (§8.1), per sample, batched; x float [B,3,S,S] in 0..1.

    Random parameters come from the CPU `generator` so results do not depend on the device;
    `strength` scales every magnitude (0 turns augmentation off).
    """
    if strength <= 0:
        return x
    n, size = x.shape[0], x.shape[-1]
    x = _flips_and_rotations(x, torch.rand(n, generator=generator))
    x = _shift_scale_rotate(x, generator, strength, p=0.5)
    x = _colour(x, generator, strength, p=0.3)
    x = _blur_or_noise(x, generator, strength, p=0.1)
    x = _coarse_dropout(x, generator, max_holes=3, max_side=max(1, size // 6), p=0.25)
    return x.clamp_(0.0, 1.0)


def _flips_and_rotations(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """OneOf p=.75: hflip (w .25), vflip (w .25), rot90 or rot270 (w .5)."""
    ops = [(0.25, lambda t: t.flip(-1)), (0.4375, lambda t: t.flip(-2)), (0.625, lambda t: t.rot90(1, (-2, -1))),
           (0.8125, lambda t: t.rot90(3, (-2, -1)))]
    for index, (low, op) in enumerate(ops):
        high = ops[index + 1][0] if index + 1 < len(ops) else 1.0
        mask = ((u >= low) & (u < high)).to(x.device)
        if mask.any():
            x[mask] = op(x[mask])
    return x


def _shift_scale_rotate(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """ShiftScaleRotate(shift .1, scale .2, rotate 30 deg), bilinear, black border."""
    picked = torch.rand(x.shape[0], generator=generator) < p
    count = int(picked.sum())
    if not count:
        return x
    angle = torch.deg2rad(_uniform(generator, count, -30.0, 30.0) * strength)
    scale = 1.0 + _uniform(generator, count, -0.2, 0.2) * strength
    shift = _uniform(generator, 2 * count, -0.1, 0.1).view(count, 2) * 2.0 * strength  # grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    mask = picked.to(x.device)
    chosen = x[mask]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(chosen.shape), align_corners=False)
    x[mask] = F.grid_sample(chosen, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def _colour(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """OneOf p=.3: brightness/contrast, gamma, saturation jitter, greyscale (equal odds)."""
    n = x.shape[0]
    picked = torch.rand(n, generator=generator) < p
    which = torch.randint(0, 4, (n,), generator=generator)
    brightness = _uniform(generator, n, -0.35, 0.35) * strength
    contrast = 1.0 + _uniform(generator, n, -0.5, 0.5) * strength
    gamma = torch.exp(_uniform(generator, n, math.log(0.8), math.log(1.1)) * strength)
    saturation = 1.0 + _uniform(generator, n, -0.3, 0.3) * strength
    for option in range(4):
        rows = torch.nonzero(picked & (which == option)).flatten()
        if not len(rows):
            continue
        chosen = x[rows.to(x.device)]
        view = (len(rows), 1, 1, 1)
        grey = (0.299 * chosen[:, 0:1] + 0.587 * chosen[:, 1:2] + 0.114 * chosen[:, 2:3]).expand_as(chosen)
        if option == 0:
            mean = chosen.mean(dim=(1, 2, 3), keepdim=True)
            chosen = (chosen - mean) * contrast[rows].view(view).to(x) + mean + brightness[rows].view(view).to(x)
        elif option == 1:
            chosen = chosen.clamp(min=0).pow(gamma[rows].view(view).to(x))
        elif option == 2:
            chosen = grey + (chosen - grey) * saturation[rows].view(view).to(x)
        else:
            chosen = grey.contiguous()
        x[rows.to(x.device)] = chosen
    return x


def _blur_or_noise(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """OneOf p=.1: 3x3 Gaussian blur (w .9) or Gaussian noise (w .1, sigma 2/255)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    n = x.shape[0]
    picked = torch.rand(n, generator=generator) < p
    blur = torch.rand(n, generator=generator) < 0.9
    blurred = torch.nonzero(picked & blur).flatten().to(x.device)
    noisy = torch.nonzero(picked & ~blur).flatten()
    if len(blurred):
        x[blurred] = gaussian_blur(x[blurred], kernel_size=[3, 3])
    if len(noisy):
        noise = torch.randn((len(noisy), *x.shape[1:]), generator=generator) * (2.0 / 255.0) * strength
        x[noisy.to(x.device)] += noise.to(x)
    return x


def _coarse_dropout(x: torch.Tensor, generator: torch.Generator, max_holes: int, max_side: int,
                    p: float) -> torch.Tensor:
    """CoarseDropout(max 3 holes, max side S/6, fill 0), p=.25."""
    n, size = x.shape[0], x.shape[-1]
    picked = torch.rand(n, generator=generator) < p
    holes = torch.randint(1, max_holes + 1, (n,), generator=generator)
    sides = torch.randint(1, max_side + 1, (n, max_holes, 2), generator=generator)
    corners = torch.rand((n, max_holes, 2), generator=generator)
    for sample in torch.nonzero(picked).flatten().tolist():
        for hole in range(int(holes[sample])):
            h, w = (int(v) for v in sides[sample, hole])
            top = int(corners[sample, hole, 0] * (size - h + 1))
            left = int(corners[sample, hole, 1] * (size - w + 1))
            x[sample, :, top:top + h, left:left + w] = 0.0
    return x


def to_model_input(pixels: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B,S,S,3] -> float [B,3,S,S] in 0..1 on the device (normalisation comes later)."""
    x = torch.from_numpy(pixels).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- loss and metric

def batch_loss(spec: ClassifierSpec, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy, or the winner's focal BCE: alpha * (1 - pt)^gamma * bce, mean."""
    logits = logits.float()
    if spec.loss == "cross_entropy":
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.exp(-bce)
    return (spec.focal_alpha * (1.0 - pt) ** spec.focal_gamma * bce).mean()


def predicted_labels(kind: str, logits: np.ndarray) -> np.ndarray:
    """Class index (multiclass, argmax) or 0/1 indicator (multilabel, sigmoid > 0.5)."""
    return logits.argmax(1) if kind == "multiclass" else (logits > 0).astype(int)


def macro_f1(kind: str, target: np.ndarray, logits: np.ndarray) -> float:
    """Macro F1 over the classes present in the truth or the predictions (as torchmetrics' macro).

    multiclass: argmax of the logits vs the one-hot target; multilabel: sigmoid > 0.5 per label.
    """
    from sklearn.metrics import f1_score

    if not len(target):
        return float("nan")
    predicted = predicted_labels(kind, logits)
    if kind == "multiclass":
        return float(f1_score(target.argmax(1), predicted, average="macro", zero_division=0))
    present = np.flatnonzero(target.any(0) | predicted.any(0))
    if not len(present):
        return float("nan")
    return float(f1_score(target[:, present].astype(int), predicted[:, present], average="macro", zero_division=0))


def per_class_f1(kind: str, target: np.ndarray, logits: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """F1 and support of every class (0 where a class has neither truth nor prediction)."""
    from sklearn.metrics import f1_score

    labels = list(range(len(class_names)))
    predicted = predicted_labels(kind, logits)
    if kind == "multiclass":
        scores = f1_score(target.argmax(1), predicted, labels=labels, average=None, zero_division=0)
    else:
        scores = f1_score(target.astype(int), predicted, average=None, zero_division=0)
    support = target.sum(0).astype(int)
    return {name: {"f1": round(float(scores[k]), 6), "support": int(support[k])} for k, name in enumerate(class_names)}


# ----------------------------------------------------------------------------- training

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


@dataclass
class TrainSettings:
    """Run-level settings shared by every model (config `classifiers`)."""

    seed: int = 42
    device: str = "auto"
    threads: int = 2
    amp: bool = True
    deterministic: bool = True
    channels_last: bool = True
    prefetch: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fingerprint(spec: ClassifierSpec, settings: TrainSettings, fold: int, train: ItemSet, valid: ItemSet) -> str:
    payload = json.dumps({"spec": asdict(spec), "seed": settings.seed, "fold": fold,
                          "train": train.ids.tolist(), "valid": valid.ids.tolist()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _atomic_save(payload: Any, path: Path) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def _validation_points(n_batches: int, per_epoch: int) -> set[int]:
    """Batch indices (0-based) after which to validate: evenly spaced, always the last batch."""
    per_epoch = min(per_epoch, n_batches)
    return {int(round(n_batches * (k + 1) / per_epoch)) - 1 for k in range(per_epoch)}


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def predict_logits(model: nn.Module, arrays: Sequence[np.ndarray], items: ItemSet, *, batch_size: int,
                   device: torch.device, tta: str = "none", amp: bool = False,
                   channels_last: bool = False) -> np.ndarray:
    """float32 [n, K] logits; with hflip TTA the mean of the plain and the flipped input."""
    model.eval()
    out = np.empty((len(items), model.head.out_features), dtype=np.float32)
    use_amp = amp and device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        for batch in _batches(np.arange(len(items)), batch_size):
            x = normalise(to_model_input(gather_pixels(arrays, items.source[batch], items.row[batch]), device,
                                         channels_last))
            logits = model(x).float()
            if tta == "hflip":
                logits = (logits + model(x.flip(-1)).float()) / 2
            out[batch] = logits.cpu().numpy()
    return out


def train_fold(spec: ClassifierSpec, arrays: Sequence[np.ndarray], train: ItemSet, valid: ItemSet,
               out_dir: str | Path, *, fold: int, settings: TrainSettings | None = None,
               on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one fold; writes `state.pt` (after every epoch) and `best.pt`; returns the fold summary.

    `best.pt` holds the weights with the best validation macro F1 (checked
    `validations_per_epoch` times per epoch; ties keep the earlier). An existing `state.pt` of the
    same model, seed and items is resumed. `on_epoch_end(epoch)` runs after each checkpoint (tests
    use it to simulate a kill).
    """
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not len(train):
        raise ValueError(f"classifier {spec.name!r} fold {fold}: no training items")
    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(settings.deterministic, warn_only=True)
    use_amp = settings.amp and device.type == "cuda"
    channels_last = settings.channels_last

    torch.manual_seed(_seed(settings.seed, fold, 0, _INIT))
    model = build_model(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs, eta_min=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    mixer = make_mixer(spec)
    fingerprint = _fingerprint(spec, settings, fold, train, valid)
    record: dict[str, Any] = {"epoch": 0, "best_f1": -1.0, "best_at": None, "history": [], "train_seconds": 0.0,
                              "train_images": 0, "mixed_batches": 0, "batches": 0}
    best_state = copy.deepcopy(model.state_dict())
    state_path = out_dir / STATE_FILE
    if state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=False)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            best_state, record = saved["best_model"], saved["record"]
            LOGGER.info("%s fold %d: resuming after epoch %d", spec.name, fold, record["epoch"])
        else:
            LOGGER.warning("%s fold %d: %s belongs to another configuration; starting afresh",
                           spec.name, fold, state_path)

    executor = ThreadPoolExecutor(max_workers=1) if settings.prefetch else None
    try:
        for epoch in range(record["epoch"], spec.epochs):
            shuffle, augment = _seed_epoch(settings.seed, fold, epoch)
            batches = _batches(shuffle.permutation(len(train)), spec.batch_size)
            points = _validation_points(len(batches), spec.validations_per_epoch)
            fetch = (lambda b: gather_pixels(arrays, train.source[b], train.row[b]))
            pending = executor.submit(fetch, batches[0]) if executor else None
            epoch_loss = torch.zeros((), device=device)
            for step, batch in enumerate(batches):
                started = time.perf_counter()
                pixels = pending.result() if executor else fetch(batch)
                if executor and step + 1 < len(batches):
                    pending = executor.submit(fetch, batches[step + 1])
                model.train()
                x = normalise(augment_batch(to_model_input(pixels, device, channels_last), augment,
                                            spec.augment_strength))
                target = torch.from_numpy(train.target[batch]).to(device)
                lam = mix_batch(mixer, x)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(x)
                loss = batch_loss(spec, logits, target)
                if lam < 1.0:
                    loss = lam * loss + (1.0 - lam) * batch_loss(spec, logits, target.flip(0))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                epoch_loss += loss.detach() * len(batch)
                record["train_seconds"] += time.perf_counter() - started
                record["train_images"] += len(batch)
                record["batches"] += 1
                record["mixed_batches"] += int(lam < 1.0)
                if step in points and len(valid):
                    f1 = macro_f1(spec.kind, valid.target, predict_logits(
                        model, arrays, valid, batch_size=spec.batch_size, device=device, amp=settings.amp,
                        channels_last=channels_last))
                    position = round(epoch + (step + 1) / len(batches), 4)
                    record["history"].append({"epoch": position, "val_f1": round(f1, 6)})
                    if f1 > record["best_f1"]:
                        record["best_f1"], record["best_at"] = f1, position
                        best_state = copy.deepcopy(model.state_dict())
            scheduler.step()
            mean_loss = float(epoch_loss) / len(train)
            record["history"].append({"epoch": epoch + 1, "train_loss": round(mean_loss, 6)})
            LOGGER.info("%s fold %d epoch %d/%d: loss %.4f, best val F1 %.4f", spec.name, fold, epoch + 1,
                        spec.epochs, mean_loss, record["best_f1"])
            if not len(valid):
                best_state = copy.deepcopy(model.state_dict())
            record["epoch"] = epoch + 1
            _atomic_save({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "best_model": best_state, "record": record}, state_path)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        if executor:
            executor.shutdown(wait=True)
    _atomic_save({"spec": asdict(spec), "fold": fold, "model": best_state, "best_f1": record["best_f1"],
                  "best_at": record["best_at"]}, out_dir / BEST_FILE)
    losses = [h["train_loss"] for h in record["history"] if "train_loss" in h]
    return {
        "model": spec.name, "fold": fold, "n_train": len(train), "n_valid": len(valid),
        "n_train_background": int((~train.real).sum()), "n_valid_background": int((~valid.real).sum()),
        "epochs": spec.epochs, "best_val_f1": round(record["best_f1"], 6), "best_at_epoch": record["best_at"],
        "train_losses": losses, "history": record["history"],
        "mixed_batch_share": round(record["mixed_batches"] / max(record["batches"], 1), 4),
        "train_images_per_second": round(record["train_images"] / max(record["train_seconds"], 1e-9), 2),
        "device": str(device),
    }


def load_best(path: str | Path, device: torch.device | str = "cpu") -> tuple[ClassifierSpec, Classifier]:
    """The spec and best weights of a fold (`best.pt`); the backbone is rebuilt without weights."""
    saved = torch.load(path, map_location=device, weights_only=False)
    spec = ClassifierSpec(**{**saved["spec"], "weights": ""})
    model = build_model(spec)
    model.load_state_dict(saved["model"])
    return ClassifierSpec(**saved["spec"]), model.to(device)


# ----------------------------------------------------------------------------- logits tables

def logits_frame(items: ItemSet, logits: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    """A LOGITS table (schema `tables.logits_schema(K)`) for the given items."""
    single = np.where(items.target.sum(1) == 1, items.target.argmax(1), -1).astype("int64")
    labels = ["|".join(str(k) for k in np.flatnonzero(row)) for row in items.target]
    frame = pd.DataFrame({
        "id": pd.Series(items.ids, dtype="str"), "name": pd.Series(items.names, dtype="str"),
        "fold": np.asarray(folds, dtype="int64"), "trustii_id": items.trustii.astype("int64"),
        "truth": single, "truth_labels": pd.Series(labels, dtype="str"),
    })
    logit_columns = pd.DataFrame(logits.astype("float64"), columns=[f"logit_{k}" for k in range(logits.shape[1])])
    return pd.concat([frame, logit_columns], axis=1)


def frame_targets(frame: pd.DataFrame, n_outputs: int) -> np.ndarray:
    return labels_to_multi_hot(frame["truth_labels"].tolist(), n_outputs)


def frame_logits(frame: pd.DataFrame) -> np.ndarray:
    columns = [c for c in frame.columns if c.startswith("logit_")]
    return frame[columns].to_numpy(np.float64)


def predict_test(checkpoints: Sequence[str | Path], arrays: Sequence[np.ndarray], items: ItemSet, *,
                 settings: TrainSettings | None = None, batch_size: int | None = None) -> np.ndarray:
    """Mean over the fold models of their (TTA-averaged, per the spec) test logits."""
    settings = settings or TrainSettings()
    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads)
    total = None
    for path in checkpoints:
        spec, model = load_best(path, device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        logits = predict_logits(model, arrays, items, batch_size=batch_size or spec.batch_size, device=device,
                                tta=spec.tta, amp=settings.amp, channels_last=settings.channels_last)
        total = logits if total is None else total + logits
    if total is None:
        raise ValueError("predict_test: no fold checkpoints given")
    return total / len(checkpoints)


# ----------------------------------------------------------------------------- evaluation

def evaluate_oof(spec_kind: str, frame: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-fold and overall OOF macro F1 and per-class F1 of one model's OOF logits table."""
    n_outputs = len(class_names)
    target, logits = frame_targets(frame, n_outputs), frame_logits(frame)
    per_fold = {int(fold): round(macro_f1(spec_kind, target[mask], logits[mask]), 6)
                for fold in sorted(frame["fold"].unique()) for mask in [frame["fold"].to_numpy() == fold]}
    return {
        "kind": spec_kind, "rows": len(frame), "oof_macro_f1": round(macro_f1(spec_kind, target, logits), 6),
        "fold_macro_f1": per_fold, "per_class_f1": per_class_f1(spec_kind, target, logits, class_names),
    }


def plot_confusion(frames: dict[str, tuple[str, pd.DataFrame, Sequence[str]]], path: str | Path) -> None:
    """One confusion-matrix panel per model: argmax vs truth (multilabel: single-label images only)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    count = max(1, len(frames))
    figure = Figure(figsize=(7.5 * count, 7))
    for panel, (name, (kind, frame, class_names)) in enumerate(frames.items()):
        axis = figure.add_subplot(1, count, panel + 1)
        rows = frame[frame["truth"] >= 0]
        labels = list(range(len(class_names)))
        predicted = frame_logits(rows).argmax(1) if len(rows) else np.array([], dtype=int)
        matrix = confusion_matrix(rows["truth"].to_numpy(), predicted, labels=labels)
        shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        axis.set_xticks(labels, class_names, rotation=90, fontsize=7)
        axis.set_yticks(labels, class_names, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("truth")
        title = "single-label images" if kind == "multilabel" else "crops"
        axis.set_title(f"{name} ({title}, n={len(rows)}, row-normalised)", fontsize=9)
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                axis.text(j, i, str(value), ha="center", va="center", fontsize=5,
                          color="white" if shares[i, j] > 0.5 else "black")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- stage entry points

def load_items(spec: ClassifierSpec, main_cache: tuple[str | Path, str | Path], truth: pd.DataFrame,
               background_cache: tuple[str | Path, str | Path] | None = None, *, with_background: bool = True
               ) -> tuple[list[np.ndarray], ItemSet, ItemSet | None, dict[str, int]]:
    """Cache arrays, main items, background items (when the spec uses them) and skip counts."""
    from leukoflow.classification import crop_cache

    pixels, index = crop_cache.read_cache(*main_cache)
    if pixels.shape[1] != spec.img_size:
        raise ValueError(f"classifier {spec.name!r}: cache {main_cache[0]} holds {pixels.shape[1]} px images, "
                         f"the model wants {spec.img_size}")
    main, skipped = main_items(spec, index, truth)
    arrays = [pixels]
    background = None
    if spec.background and with_background:
        if background_cache is None:
            raise ValueError(f"classifier {spec.name!r} uses the background class but no background cache was given")
        bg_pixels, bg_index = crop_cache.read_cache(*background_cache)
        arrays.append(bg_pixels)
        background = background_items(spec, bg_index, source=1)
    return arrays, main, background, skipped


def run_train_fold(spec: ClassifierSpec, fold: int, *, main_cache: tuple[str | Path, str | Path],
                   truth: pd.DataFrame, out_dir: str | Path, oof_path: str | Path,
                   background_cache: tuple[str | Path, str | Path] | None = None,
                   settings: TrainSettings | None = None) -> dict[str, Any]:
    """Train one (model, fold), then write its OOF logits (best weights, no TTA, real items only)."""
    settings = settings or TrainSettings()
    arrays, main, background, skipped = load_items(spec, main_cache, truth, background_cache)
    train, valid = split_fold(main, fold, background)
    summary = train_fold(spec, arrays, train, valid, out_dir, fold=fold, settings=settings)
    _, model = load_best(Path(out_dir) / BEST_FILE, resolve_device(settings.device))
    real_valid = valid.subset(valid.real)
    logits = predict_logits(model, arrays, real_valid, batch_size=spec.batch_size,
                            device=resolve_device(settings.device), amp=settings.amp,
                            channels_last=settings.channels_last)
    frame = logits_frame(real_valid, logits, np.full(len(real_valid), fold))
    tables.write_table(frame, oof_path, tables.logits_schema(spec.n_outputs))
    summary.update(skipped)
    summary["oof_macro_f1"] = round(macro_f1(spec.kind, real_valid.target, logits), 6)
    return summary


def run_predict(spec: ClassifierSpec, checkpoints: Sequence[str | Path], fold_oof_paths: Sequence[str | Path], *,
                main_cache: tuple[str | Path, str | Path], truth: pd.DataFrame, oof_path: str | Path,
                test_path: str | Path, settings: TrainSettings | None = None) -> dict[str, Any]:
    """Concatenate the fold OOF tables and write the fold-averaged, TTA-averaged test logits."""
    started = time.perf_counter()
    schema = tables.logits_schema(spec.n_outputs)
    oof = pd.concat([tables.read_table(path, schema) for path in fold_oof_paths], ignore_index=True)
    tables.write_table(oof, oof_path, schema)
    arrays, main, _, _ = load_items(spec, main_cache, truth, with_background=False)
    test = main.subset(main.role == "test")
    logits = predict_test(checkpoints, arrays, test, settings=settings) if len(test) else \
        np.zeros((0, spec.n_outputs), dtype=np.float32)
    tables.write_table(logits_frame(test, logits, np.full(len(test), -1)), test_path, schema)
    return {"model": spec.name, "oof_rows": len(oof), "test_rows": len(test), "folds": len(checkpoints),
            "tta": spec.tta, "oof_macro_f1": round(macro_f1(spec.kind, frame_targets(oof, spec.n_outputs),
                                                            frame_logits(oof)), 6),
            "predict_seconds": round(time.perf_counter() - started, 3)}


def settings_from_config(section: dict[str, Any], seed: int, threads: int | None = None) -> TrainSettings:
    """TrainSettings from the config's `classifiers` section (run-level keys only).

    `threads` is what the scheduler granted the job (snakemake.threads, e.g. after --set-threads);
    it wins over the configured count.
    """
    names = {f.name for f in fields(TrainSettings)} - {"seed"}
    settings = {key: section[key] for key in names if key in section}
    if threads is not None:
        settings["threads"] = threads
    return TrainSettings(seed=seed, **settings)


def truth_for(spec: ClassifierSpec, *, crops: pd.DataFrame | None = None, boxes: pd.DataFrame | None = None,
              folds: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table `main_items` needs: the crop table (multiclass) or `image_labels` (multilabel)."""
    if spec.kind == "multiclass":
        if crops is None:
            raise ValueError(f"classifier {spec.name!r}: a multiclass model needs the crop table")
        return crops
    if boxes is None or folds is None:
        raise ValueError(f"classifier {spec.name!r}: a multilabel model needs the curated boxes and folds")
    return image_labels(boxes, folds)


def truth_from_tables(spec: ClassifierSpec, inputs: Any) -> pd.DataFrame:
    """`truth_for` on the crop/box/fold tables a rule declares (named inputs; absent ones are None)."""
    def optional(name: str, schema: tables.Schema) -> pd.DataFrame | None:
        return tables.read_table(inputs[name], schema) if name in inputs.keys() else None

    return truth_for(spec, crops=optional("crops", tables.CROPS), boxes=optional("boxes", tables.CURATED_BOXES),
                     folds=optional("folds", tables.FOLDS))


def single_label_f1(frame: pd.DataFrame) -> float:
    """Macro F1 of the argmax over the 23 classes on rows with exactly one true label."""
    from sklearn.metrics import f1_score

    rows = frame[frame["truth"] >= 0]
    if not len(rows):
        return float("nan")
    predicted = frame_logits(rows)[:, :len(CLASSES)].argmax(1)
    return float(f1_score(rows["truth"].to_numpy(), predicted, average="macro", zero_division=0))


def run_evaluate(models: dict[str, dict[str, Any]], confusion_path: str | Path) -> dict[str, Any]:
    """Stage summary over every model: OOF macro F1 overall, per fold and per class; training figures.

    `models[name]` holds `spec` (config entry), `oof` (OOF logits path), `test` (test logits path)
    and `folds` (the per-fold training summaries, as dicts).
    """
    summary: dict[str, Any] = {"models": {}}
    panels = {}
    for name, entry in models.items():
        spec = ClassifierSpec.from_config(entry["spec"])
        schema = tables.logits_schema(spec.n_outputs)
        oof = tables.read_table(entry["oof"], schema)
        test = tables.read_table(entry["test"], schema)
        result = evaluate_oof(spec.kind, oof, spec.class_names)
        if spec.kind == "multilabel":
            result["single_label_argmax_macro_f1"] = round(single_label_f1(oof), 6)
        fold_runs = sorted(entry["folds"], key=lambda run: run["fold"])
        result.update({
            "backbone": spec.backbone, "img_size": spec.img_size, "n_outputs": spec.n_outputs,
            "test_rows": len(test), "tta": spec.tta,
            "fold_best_val_f1": {int(run["fold"]): run["best_val_f1"] for run in fold_runs},
            "fold_best_at_epoch": {int(run["fold"]): run["best_at_epoch"] for run in fold_runs},
            "train_images_per_second": round(float(np.mean([run["train_images_per_second"] for run in fold_runs])), 2),
            "train_seconds": round(float(sum(run.get("seconds", 0.0) for run in fold_runs)), 3),
            # every fold sees the same crop table, so each reports the same count
            "unlabelled_crops_skipped": max((run.get("unlabelled_crops_skipped", 0) for run in fold_runs), default=0),
        })
        summary["models"][name] = result
        panels[name] = (spec.kind, oof, spec.class_names)
        LOGGER.info("%s: OOF macro F1 %.4f", name, result["oof_macro_f1"])
    plot_confusion(panels, confusion_path)
    summary["oof_macro_f1"] = {name: result["oof_macro_f1"] for name, result in summary["models"].items()}
    summary["best_oof_macro_f1"] = max(summary["oof_macro_f1"].values(), default=0.0)
    summary["n_classes"] = len(CLASSES)
    return summary
