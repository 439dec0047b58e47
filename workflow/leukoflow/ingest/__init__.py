"""Stage 1: the data contract. Rule entries by rule name: `leukoflow.ingest.X`, imported on first use."""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {"hold_out_test": "holdout", "ingest": "contract", "no_test_table": "holdout"}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
