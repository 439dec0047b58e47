"""The synthetic mini-Cytologia generator; rule `synthesize` is `leukoflow.synthetic.synthesize`.

Imported on first use (`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {"challenge_layout": "dataset", "synthesize": "dataset"}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
