"""The ensemble's inputs: every classifier's logits aligned on the crop id (docs/method.md §9.1).

Every classifier's logits arrive already averaged over its fold models (and hflip TTA for test)
by the classification stage. The crop-level multiclass (MC) tables are aligned on crop id; the
image-level multilabel (ML) tables are mapped to the crops of their image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.constants import CLASSES

N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class EnsembleInputs:
    """Every crop's logits from every model, aligned on the crop id (order of the first MC table)."""

    ids: np.ndarray  # str, crop_id
    names: np.ndarray  # str, image NAME
    folds: np.ndarray  # int
    trustii: np.ndarray  # int
    truth: np.ndarray  # int, -1 when unknown (test)
    mc_names: tuple[str, ...]
    mc_logits: np.ndarray  # float64 [M, n, 23]
    ml_names: tuple[str, ...]
    ml_logits: np.ndarray  # float64 [n, 23], mean over the ML models; 0 where has_ml is False
    has_ml: np.ndarray  # bool [n]: every ML model has a row for the crop's image
    single_cell: np.ndarray  # bool [n]: the crop's image has exactly one crop

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> EnsembleInputs:
        """The given rows; `single_cell` keeps its value (it is a property of the whole image)."""
        return EnsembleInputs(
            self.ids[rows], self.names[rows], self.folds[rows], self.trustii[rows], self.truth[rows],
            self.mc_names, self.mc_logits[:, rows], self.ml_names, self.ml_logits[rows], self.has_ml[rows],
            self.single_cell[rows])


def read_logits(path: str | Path) -> pd.DataFrame:
    """A LOGITS table of any width, validated against `tables.logits_schema(K)`."""
    frame = pd.read_parquet(path)
    n_logits = sum(column.startswith("logit_") for column in frame.columns)
    return tables.validate(frame, tables.logits_schema(n_logits), str(path))


def _class_logits(frame: pd.DataFrame, model: str) -> np.ndarray:
    columns = [f"logit_{k}" for k in range(N_CLASSES)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"model {model!r}: logits table lacks {missing[:3]} (needs the {N_CLASSES} class logits)")
    return frame[columns].to_numpy(np.float64)


def align_inputs(multiclass: Mapping[str, pd.DataFrame],
                 multilabel: Mapping[str, pd.DataFrame] | None = None) -> EnsembleInputs:
    """Align the crop-level MC tables on crop id and map the image-level ML tables to the crops.

    Raises:
        ValueError: no MC table, or an MC table whose crop ids differ from the first one's.
    """
    if not multiclass:
        raise ValueError("ensemble: at least one multiclass model is needed")
    multilabel = multilabel or {}
    first_name, first = next(iter(multiclass.items()))
    if first["id"].duplicated().any():
        raise ValueError(f"ensemble: model {first_name!r} repeats crop id {first['id'][first['id'].duplicated()].iloc[0]!r}")
    ids = first["id"].to_numpy(str)
    stacked = []
    for name, frame in multiclass.items():
        indexed = frame.set_index("id")
        missing = sorted(set(ids) - set(indexed.index))
        extra = sorted(set(indexed.index) - set(ids))
        if missing or extra or len(frame) != len(ids):
            raise ValueError(f"ensemble: model {name!r} has other crops than {first_name!r}: "
                             f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} extra (e.g. {extra[:2]})")
        stacked.append(_class_logits(indexed.loc[ids], name))
    names = first["name"].to_numpy(str)
    counts = pd.Series(names).value_counts()
    single_cell = pd.Series(names).map(counts).to_numpy() == 1
    has_ml = np.ones(len(ids), dtype=bool)
    ml_sum = np.zeros((len(ids), N_CLASSES))
    for name, frame in multilabel.items():
        indexed = frame.drop_duplicates("id").set_index("id")
        present = np.isin(names, indexed.index.to_numpy(str))
        has_ml &= present
        rows = _class_logits(indexed.reindex(names), name)
        ml_sum += np.where(present[:, None], rows, 0.0)
    if not multilabel:
        has_ml[:] = False
    ml_logits = np.where(has_ml[:, None], ml_sum / max(len(multilabel), 1), 0.0)
    return EnsembleInputs(
        ids=ids, names=names, folds=first["fold"].to_numpy("int64"), trustii=first["trustii_id"].to_numpy("int64"),
        truth=first["truth"].to_numpy("int64"), mc_names=tuple(multiclass), mc_logits=np.stack(stacked),
        ml_names=tuple(multilabel), ml_logits=ml_logits, has_ml=has_ml, single_cell=single_cell)


