"""Stage 1: the data contract. Rule entries by rule name: `leukoflow.ingest.ingest`."""

from .contract import ingest  # noqa: F401
