"""Bundle weights as safetensors: written from the run's checkpoints, read without unpickling.

A pickled checkpoint (`torch.load(weights_only=False)`, `YOLO(path)`) can run arbitrary code
when it is loaded, and a bundle's checksum manifest proves integrity, not origin: whoever hands
over a bundle can regenerate the manifest. So a bundle carries only tensors (safetensors: a JSON
header and raw buffers, nothing executable) and plain data (bundle.json, the detector's
architecture YAML); the models are rebuilt from their architecture and the tensors loaded into
them. The run's own checkpoints are read once, at export, inside the run that wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SAFETENSORS_SUFFIX = ".safetensors"
YAML_SUFFIX = ".yaml"


class UnsafeWeightsError(ValueError):
    """A weight file that is not plain safetensors (for example a pickle): it is never loaded."""


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """Write a state dict as safetensors (tensors copied out, so shared storage is allowed)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def load_state(path: str | Path) -> dict[str, Any]:
    """The tensors of a safetensors file on CPU.

    Raises:
        UnsafeWeightsError: the file is not named `.safetensors` or is not a safetensors file
            (a pickle or anything else), named with the reason; nothing in it was executed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise UnsafeWeightsError(f"{path}: bundles load weights only from {SAFETENSORS_SUFFIX} files; a pickled "
                                 "checkpoint (.pt) can run code when loaded and is refused")
    if _looks_like_pickle(path):
        raise UnsafeWeightsError(f"{path}: this is a pickle, not a safetensors file; it was not loaded "
                                 "(a pickle can run code)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise UnsafeWeightsError(f"{path}: not a valid safetensors file ({error}); it was not loaded") from error


def _looks_like_pickle(path: Path) -> bool:
    """Pickle protocol 2+ starts with 0x80; torch's zip checkpoints with 'PK'."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[:1] == b"\x80" or head == b"PK"


# ----------------------------------------------------------------------------- classifiers

def read_classifier_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec dict, state dict) of a run's `best.pt`, loaded with `weights_only=True`."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    return dict(saved["spec"]), saved["model"]


def build_classifier(spec: Mapping[str, Any], weights: str | Path, device: Any):
    """The classifier of `spec` (architecture rebuilt by timm, no pretrained file) with `weights` loaded."""
    from leukoflow.classification.model import build_model
    from leukoflow.classification.spec import ClassifierSpec

    spec_obj = ClassifierSpec(**{**spec, "weights": ""})
    model = build_model(spec_obj)
    model.load_state_dict(load_state(weights), strict=True)
    return spec_obj, model.to(device).eval()


# ----------------------------------------------------------------------------- detectors

def read_detector_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture dict, float32 state dict) of a detector trained by this run.

    The checkpoint is ultralytics' pickle: it is opened here only at export, inside the run
    that wrote it; the bundle keeps its architecture and tensors, never the pickle.
    """
    from leukoflow.detection import yolo as detection

    model = detection.import_yolo()(str(path)).model.float()
    return _plain(model.yaml), model.state_dict()


def write_detector_yaml(architecture: Mapping[str, Any], path: str | Path) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dict(architecture), sort_keys=False))


def build_detector(architecture_yaml: str | Path, weights: str | Path):
    """An ultralytics YOLO built from the architecture YAML with the safetensors weights loaded.

    ultralytics takes the model scale from the YAML file's name (`yolo11n.yaml` -> n), which the
    bundle keeps as written at training, so the rebuilt network has the trained shapes.
    """
    from leukoflow.detection import yolo as detection

    model = detection.import_yolo()(str(architecture_yaml), task="detect")
    model.model.load_state_dict(load_state(weights), strict=True)
    model.model.float().eval()
    return model


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples as lists, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
