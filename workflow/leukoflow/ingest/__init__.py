"""Stage 1: the data contract. Rule entries by rule name: `leukoflow.ingest.X`."""

from .contract import ingest  # noqa: F401
from .holdout import hold_out_test, no_test_table  # noqa: F401
