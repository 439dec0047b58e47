"""Curation stage: de-duplication, box repair, folds and their summary; rule X is `leukoflow.curation.X`."""

from leukoflow.curation.box_repair import repair_boxes
from leukoflow.curation.duplicates import deduplicate
from leukoflow.curation.folds import make_folds
from leukoflow.curation.summary import summarize_curation

__all__ = ["deduplicate", "make_folds", "repair_boxes", "summarize_curation"]
