"""Curation stage: de-duplication, box repair, folds and their summary; rule X is `leukoflow.curation.X`.

Entries are imported on first use (`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {
    "deduplicate": "duplicates",
    "make_folds": "folds",
    "repair_boxes": "box_repair",
    "summarize_curation": "summary",
}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
