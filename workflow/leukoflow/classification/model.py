"""The classifier network (timm backbone + linear head, docs/method.md §8.1), where its first weights
come from, and how saved fold weights are read back and run.

Weights from outside the run (ImageNet checkpoints) are read by timm with safetensors or
`torch.load(weights_only=True)`; our own fold checkpoints are read with `weights_only=True` too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoflow.classification.augment import normalise, to_model_input
from leukoflow.classification.items import ItemSet, gather_pixels
from leukoflow.classification.spec import ClassifierSpec
from leukoflow.engine.devices import torch_device as resolve_device

LOGGER = logging.getLogger(__name__)
BEST_FILE = "best.pt"


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


def build_model(spec: ClassifierSpec, weights: str | None = None) -> Classifier:
    """The backbone from timm; ImageNet weights only from a local file (`weights`, never the hub).

    `weights` None means the spec's own `weights` key; "" means random initialisation.
    """
    import timm

    weights = spec.weights if weights is None else weights
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"classifier {spec.name!r}: weights file {weights} does not exist "
                                    "(run the fetch_weights rule where the internet is; jobs never download)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(Path(weights).resolve())})
    return Classifier(timm.create_model(spec.backbone, **kwargs), spec.n_outputs)


def initial_model(spec: ClassifierSpec, init: Sequence[str]) -> Classifier:
    """The model a fold starts from: another model's fold weights (`init_from`), else `weights`.

    Fine-tuning keeps the backbone and, when the class count matches, the head of the earlier
    stage (the winner's stage-2/3 runs); a head of another width starts afresh.
    """
    if not init:
        return build_model(spec)
    model = build_model(spec, weights="")
    saved = torch.load(init[0], map_location="cpu", weights_only=True)
    state = saved["model"]
    if state["head.weight"].shape != model.head.weight.shape:
        state = {key: value for key, value in state.items() if not key.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("head.") for key in missing):
        raise ValueError(f"classifier {spec.name!r}: {init[0]} is not a {spec.backbone} checkpoint "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    LOGGER.info("%s: starts from %s (%s)", spec.name, init[0], "backbone only" if missing else "backbone and head")
    return model


def save_best(path: Path, spec: ClassifierSpec, fold: int, state: dict[str, torch.Tensor], best_score: float,
              best_at: float | None) -> None:
    atomic_save({"spec": asdict(spec), "fold": fold, "model": state, "best_score": best_score,
                 "best_at": best_at}, path)


def atomic_save(payload: Any, path: Path) -> None:
    """torch.save to a partial file, then rename: a killed job never leaves half a checkpoint."""
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_best(path: str | Path, device: torch.device | str = "cpu") -> tuple[ClassifierSpec, Classifier]:
    """The spec and best weights of a fold (`best.pt`); the backbone is rebuilt without weights."""
    saved = torch.load(path, map_location=device, weights_only=True)
    names = {f.name for f in fields(ClassifierSpec)}
    spec = ClassifierSpec(**{key: value for key, value in saved["spec"].items() if key in names})
    model = build_model(spec, weights="")
    model.load_state_dict(saved["model"])
    return spec, model.to(device)


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def predict_logits(model: nn.Module, arrays: Sequence[np.ndarray], items: ItemSet, *, batch_size: int,
                   device: torch.device, tta: str = "none", amp: bool = False,
                   channels_last: bool = False) -> np.ndarray:
    """float32 [n, K] logits; with hflip TTA the mean of the plain and the flipped input."""
    model.eval()
    out = np.empty((len(items), model.head.out_features), dtype=np.float32)
    use_amp = amp and device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        for batch in batches(np.arange(len(items)), batch_size):
            x = normalise(to_model_input(gather_pixels(arrays, items.source[batch], items.row[batch]), device,
                                         channels_last))
            logits = model(x).float()
            if tta == "hflip":
                logits = (logits + model(x.flip(-1)).float()) / 2
            out[batch] = logits.cpu().numpy()
    return out
