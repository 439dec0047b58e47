"""Inference: the model bundle (rule `export_bundle`) and `leukoflow predict`.

The entry is imported on first use (`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {"export_bundle": "bundle"}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
