"""Ingest stage: the data contract of the input tables and images; rule X is `leukoflow.ingest.X`."""

from leukoflow.ingest.holdout import hold_out_test, no_test_table

__all__ = ["hold_out_test", "no_test_table"]
