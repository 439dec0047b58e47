"""Stage summaries as JSON: write, read and flatten (`{"a": {"b": 1}}` -> `{"a.b": 1}`).

Every rule writes its summary with `write_json` (through `runtime.run_rule`); the report, the
MLflow runs and the reproduction check read and flatten summaries with the same two functions.
`metric_values` turns a summary into MLflow metric points (`leukoflow.engine.tracking`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=plain_value) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def plain_value(value: Any) -> Any:
    """numpy scalars and paths in summaries become plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys: {"a": {"b": 1}} -> {"a.b": 1}; an empty mapping is a value."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def metric_values(summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) of every number in a summary; a list of numbers is a curve over steps."""
    values = []
    for key, value in flatten(summary).items():
        key, value = metric_key(key), _plain_number(value)
        if isinstance(value, (int, float)):
            values.append((key, float(value), 0))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(_plain_number(v), (int, float)) for v in value):
            values += [(key, float(_plain_number(v)), step) for step, v in enumerate(value)]
    return values


def end_of_job_values(summary: Mapping[str, Any], live_keys: set[str]) -> list[tuple[str, float, int]]:
    """The summary's (key, value, step) that per-epoch logging has not drawn. Left out once epochs were
    logged live: the summary's lists (the same curves: `train_losses`, `history.train/box_loss`) and numbers
    named like a live series (`best_val_score`, `validation.val/box_loss`: its last point again)."""
    values = metric_values(summary)
    if not live_keys:
        return values
    curves = {metric_key(key) for key, value in flatten(summary).items() if isinstance(value, (list, tuple))}
    return [(key, value, step) for key, value, step in values
            if key not in curves and key not in live_keys and key.rpartition(".")[2] not in live_keys]


def _plain_number(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()
    return int(value) if isinstance(value, bool) else value


def metric_key(key: str) -> str:
    """MLflow keys allow letters, digits, `_ - . / space`; anything else becomes `_`."""
    return re.sub(r"[^\w\-./ ]", "_", key)
