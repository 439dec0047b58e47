"""Which device a job computes on: one answer for torch (classifiers) and ultralytics (detectors).

torch is imported only when a device is resolved: the Snakefile parse never pays for it.
"""

from __future__ import annotations

from typing import Any

AUTO = "auto"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda:0' (first visible GPU, honouring CUDA_VISIBLE_DEVICES) or 'cpu'; else unchanged.

    The result is a device string both libraries read: torch ('cpu', 'cuda', 'cuda:0') and
    ultralytics (the same, plus GPU indices such as '0' or '0,1', which pass through unchanged).
    """
    if name != AUTO:
        return name
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def torch_device(name: str) -> Any:
    """The `torch.device` of a configured device name ('auto', 'cpu', 'cuda', 'cuda:1', or a GPU index '1')."""
    import torch

    resolved = resolve_device(name)
    return torch.device(f"cuda:{resolved}" if resolved.isdigit() else resolved)
