"""Inference: the model bundle (rule `export_bundle`) and `leukoflow predict`."""

from .bundle import export_bundle

__all__ = ["export_bundle"]
