"""The growing annotation of a synthetic dataset: box rows and the defect record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leukoflow.synthetic.plan import Box


@dataclass
class BoxRow:
    """One annotation row before the table is ordered; `key` survives re-ordering."""

    key: int
    name: str
    x1: int
    y1: int
    x2: int
    y2: int
    label: str


@dataclass
class Dataset:
    """Everything the writer needs, built up by the defect injectors."""

    images_dir: Path
    sizes: dict[str, tuple[int, int]]  # name -> (width, height)
    train: list[BoxRow] = field(default_factory=list)
    test: list[BoxRow] = field(default_factory=list)
    defects: list[dict[str, object]] = field(default_factory=list)  # kind, name, source, row_key, detail
    train_by_name: dict[str, list[BoxRow]] = field(default_factory=dict)
    next_key: int = 0

    def add_row(self, split: str, name: str, box: Box, label: str) -> BoxRow:
        row = BoxRow(self.next_key, name, *box, label)
        self.next_key += 1
        if split == "train":
            self.train.append(row)
            self.train_by_name.setdefault(name, []).append(row)
        else:
            self.test.append(row)
        return row

    def record(self, kind: str, name: str, detail: str, source: str = "", row: BoxRow | None = None) -> None:
        self.defects.append({"kind": kind, "name": name, "source": source,
                             "row_key": row.key if row else -1, "detail": detail})

    def rows_of(self, name: str) -> list[BoxRow]:
        """Train rows of an image (a copy of the list)."""
        return list(self.train_by_name.get(name, []))
