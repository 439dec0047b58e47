"""Data-quality ledger: one row per input row or image that a stage repaired, removed or quarantined.

Stages (ingest, deduplicate, repair_boxes) collect their decisions in a `LedgerBuilder` while they
work and write `to_frame()` once with `tables.write_table(..., tables.LEDGER)`. Nothing a stage
drops or changes may be missing from its ledger: nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import astuple, dataclass

import numpy as np
import pandas as pd

from leukoflow import tables

# Row and image status values of the ingest/curation tables (tables._STATUS).
STATUS_OK = "ok"
STATUS_REPAIRED = "repaired"
STATUS_QUARANTINED = "quarantined"

# Ledger actions (tables.LEDGER "action").
ACTION_REPAIRED = "repaired"
ACTION_REMOVED = "removed"
ACTION_QUARANTINED = "quarantined"
ACTIONS = (ACTION_REPAIRED, ACTION_REMOVED, ACTION_QUARANTINED)

NO_ROW = -1  # `row` of an entry about an image rather than a table row
REASON_SEPARATOR = ";"  # joins several reason codes in a `reason` column


@dataclass(frozen=True)
class LedgerEntry:
    stage: str
    table: str
    row: int
    name: str
    field: str
    action: str
    reason: str
    detail: str


class LedgerBuilder:
    """Collects ledger entries in the order they are added; `to_frame` gives the LEDGER table."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []

    def add(self, stage: str, table: str, row: int, name: str, field: str, action: str,
            reason: str, detail: str = "") -> None:
        """Record one decision.

        Args:
            stage: stage that decided (ingest | deduplicate | repair_boxes).
            table: train.csv | test.csv | images.
            row: 0-based data row in `table`, `NO_ROW` for an image without a row.
            name: NAME of the image concerned (may be empty when the NAME itself is missing).
            field: column or property at fault.
            action: one of `ACTIONS`.
            reason: a single reason code (no `REASON_SEPARATOR` in it).
            detail: human-readable detail (values seen, exception text).

        Raises:
            ValueError: unknown action, or a reason code containing the separator.
        """
        if action not in ACTIONS:
            raise ValueError(f"ledger action {action!r} is not one of {ACTIONS}")
        if not reason or REASON_SEPARATOR in reason:
            raise ValueError(f"ledger reason {reason!r} must be one non-empty code without {REASON_SEPARATOR!r}")
        self._entries.append(LedgerEntry(stage, table, int(row), name, field, action, reason, detail))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def reason_counts(self) -> dict[str, dict[str, int]]:
        """Entries per table and reason code, e.g. {"train.csv": {"unknown_class": 3}}; keys sorted."""
        counts = Counter((entry.table, entry.reason) for entry in self._entries)
        by_table: dict[str, dict[str, int]] = {}
        for (table, reason), count in sorted(counts.items()):
            by_table.setdefault(table, {})[reason] = count
        return by_table

    def to_frame(self) -> pd.DataFrame:
        """The entries as a frame matching `tables.LEDGER` (columns and dtypes)."""
        if not self._entries:
            return tables.empty_frame(tables.LEDGER)
        columns = list(zip(*(astuple(entry) for entry in self._entries)))
        frame = pd.DataFrame(dict(zip(tables.LEDGER.column_names, columns)))
        return frame.astype({"row": "int64"})


def join_reasons(reasons: list[str]) -> str:
    """Reason codes as stored in a `reason` column (order kept, duplicates dropped)."""
    return REASON_SEPARATOR.join(dict.fromkeys(reasons))


def usable_rows(frame: pd.DataFrame) -> np.ndarray:
    """Positions of the rows of an ingest or curation table that no stage quarantined."""
    return np.flatnonzero((frame["status"] != STATUS_QUARANTINED).to_numpy(bool))


def usable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of an ingest or curation table that no stage quarantined."""
    return frame.iloc[usable_rows(frame)]


def ledger_frame(records: list[dict[str, object]]) -> pd.DataFrame:
    """LEDGER-schema frame from dicts with the ledger's keys (validated by LedgerBuilder)."""
    builder = LedgerBuilder()
    for record in records:
        builder.add(**record)
    frame = builder.to_frame()
    return tables.schema_frame({c: frame[c] for c in tables.LEDGER.column_names}, tables.LEDGER)
