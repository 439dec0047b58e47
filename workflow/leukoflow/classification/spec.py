"""What one classifier is (`ClassifierSpec`, one `classifiers.models` entry) and how a run trains
(`TrainSettings`, the run-level `classifiers` keys).

Neither class has defaults: the optional per-model keys take their defaults from
config/schema.yaml (`model_defaults`), so the schema is the one place they are written.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from leukoflow.constants import BACKGROUND_CLASS, CLASSES

KINDS = ("multiclass", "multilabel")
LOSSES = ("cross_entropy", "focal_bce")
TTA_MODES = ("none", "hflip")
SELECTIONS = ("argmax_f1", "val_loss")


def model_defaults(schema_path: str | Path) -> dict[str, Any]:
    """The `default` of every optional per-model key in the schema's `classifiers.models` items."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    items = schema["properties"]["classifiers"]["properties"]["models"]["items"]
    return {key: rule["default"] for key, rule in items["properties"].items() if "default" in rule}


def with_defaults(entry: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A config model entry completed with the schema defaults (the entry wins), keys sorted: a rule
    param, and Snakemake's params trigger compares dicts in order, so reordering a YAML entry's keys
    must not re-train the model."""
    return dict(sorted({**defaults, **entry}.items()))


@dataclass(frozen=True)
class ClassifierSpec:
    """One entry of `classifiers.models`, completed with the schema defaults (`with_defaults`)."""

    name: str
    backbone: str
    kind: str
    img_size: int
    background: bool
    loss: str
    focal_alpha: float
    focal_gamma: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    mix_prob: float
    cutmix_switch_prob: float
    mixup_alpha: float
    cutmix_alpha: float
    augment_strength: float
    tta: str
    weights: str
    init_from: str
    pseudo_round: int
    selection: str
    validations_per_epoch: int

    def __post_init__(self) -> None:
        problems = []
        for key, allowed in (("kind", KINDS), ("loss", LOSSES), ("tta", TTA_MODES), ("selection", SELECTIONS)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key} {getattr(self, key)!r} not in {allowed}")
        for key in ("img_size", "epochs", "batch_size", "validations_per_epoch"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1")
        if self.init_from == self.name:
            problems.append("init_from names the model itself")
        if self.pseudo_round < 0 or (self.pseudo_round and self.kind != "multiclass"):
            problems.append("pseudo_round must be >= 0, and > 0 only for a multiclass model")
        if problems:
            raise ValueError(f"classifier {self.name!r}: " + "; ".join(problems))

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> ClassifierSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        missing = sorted(known - set(entry))
        if unknown or missing:
            raise ValueError(f"classifier {entry.get('name')!r}: unknown key(s) {unknown}, missing key(s) {missing} "
                             "(complete an entry with the schema defaults: spec.with_defaults)")
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


@dataclass(frozen=True)
class TrainSettings:
    """Run-level settings shared by every model (config `classifiers`, plus the run seed)."""

    seed: int
    device: str
    threads: int
    amp: bool
    deterministic: bool
    channels_last: bool
    prefetch: bool
