"""Pseudo-label rounds: fold-safe selection, training on them, the round summary (the tiny run with a
round is in tests/test_classification_workflow.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from leukoflow import tables
from leukoflow.classification import pseudo_labels
from leukoflow.constants import CLASSES

N = len(CLASSES)


def _crops() -> pd.DataFrame:
    """Test crops: a.jpg and b.jpg hold one cell each, c.jpg two; detector scores differ."""
    rows = [("a.jpg#0", "a.jpg", 0.95), ("b.jpg#0", "b.jpg", 0.5), ("c.jpg#0", "c.jpg", 0.99), ("c.jpg#1", "c.jpg", 0.99)]
    return pd.DataFrame({
        "crop_id": [r[0] for r in rows], "name": [r[1] for r in rows], "split": "test", "fold": -1,
        "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0, "score": [r[2] for r in rows], "label": "", "class_idx": -1,
        "trustii_id": np.arange(4, dtype="int64"), "source": "det1_test",
    }).astype({"crop_id": "str", "name": "str", "split": "str", "label": "str", "source": "str"})


def _test_logits(ids, winner: int) -> pd.DataFrame:
    logits = np.full((len(ids), N), -5.0)
    logits[:, winner] = 5.0
    frame = pd.DataFrame({"id": ids, "name": [i.split("#")[0] for i in ids], "fold": -1, "trustii_id": -1,
                          "truth": -1, "truth_labels": ""})
    return pd.concat([frame, pd.DataFrame(logits, columns=[f"logit_{k}" for k in range(N)])], axis=1)


def test_each_fold_is_labelled_by_its_own_models_and_single_cells_only(tmp_path):
    crops = _crops()
    ids = crops["crop_id"].tolist()
    paths = []
    for fold, winner in enumerate((3, 5)):  # fold 0's model says class 3, fold 1's says class 5
        path = tmp_path / f"fold{fold}.parquet"
        _test_logits(ids, winner).to_parquet(path, index=False)
        paths.append(str(path))
    tables.write_table(crops, tmp_path / "crops.parquet", tables.CROPS)
    summary = pseudo_labels.select_pseudo_labels(fold_test=paths, crops=str(tmp_path / "crops.parquet"),
                                                 pseudo=str(tmp_path / "round1.parquet"), round=1, threshold=0.9,
                                                 models=["m"], n_folds=2)
    table = tables.read_table(tmp_path / "round1.parquet", tables.PSEUDO_LABELS)
    # b.jpg: 0.5 x ~1.0 is below the threshold; c.jpg has two cells
    assert sorted(set(table["crop_id"])) == ["a.jpg#0"]
    assert table.set_index("fold").loc[0, "class_idx"] == 3 and table.set_index("fold").loc[1, "class_idx"] == 5
    assert summary["pseudo_labels"] == 1 and summary["per_fold"] == {"0": 1, "1": 1}


def test_round_summary_reports_pseudo_labels_and_oof_per_round(tmp_path):
    oof_paths = []
    truth = np.array([0, 1, 2, 0])
    for name, noise in (("r0", 0.0), ("r1", 0.0)):
        logits = np.full((4, N), -1.0)
        logits[np.arange(4), truth if name == "r1" else np.array([0, 1, 1, 0])] = 2.0
        frame = pd.DataFrame({"id": [f"x{k}" for k in range(4)], "name": [f"x{k}" for k in range(4)],
                              "fold": [0, 1, 0, 1], "trustii_id": -1, "truth": truth,
                              "truth_labels": [str(t) for t in truth]})
        frame = pd.concat([frame, pd.DataFrame(logits, columns=[f"logit_{k}" for k in range(N)])], axis=1)
        path = tmp_path / f"{name}.parquet"
        tables.write_table(frame, path, tables.logits_schema(N))
        oof_paths.append(str(path))
    (tmp_path / "round1.json").write_text(json.dumps({"round": 1, "pseudo_labels": 7, "per_fold": {"0": 4, "1": 3},
                                                      "threshold": 0.9}))
    summary = pseudo_labels.summarize_pseudo_labels(rounds=[str(tmp_path / "round1.json")], oof=oof_paths,
                                                    models=["r0", "r1"], model_rounds=[0, 1], n_outputs=[N, N])
    rounds = {entry["round"]: entry for entry in summary["rounds"]}
    assert rounds[0]["pseudo_labels"] == 0 and rounds[1]["pseudo_labels"] == 7
    assert rounds[1]["oof_macro_f1"] == 1.0 and rounds[0]["oof_macro_f1"] < 1.0
