"""Stage summaries as JSON: write, read and flatten (`{"a": {"b": 1}}` -> `{"a.b": 1}`).

Every rule writes its summary with `write_json` (through `runtime.run_rule`); the report, the
MLflow runs and the reproduction check read and flatten summaries with the same two functions.
"""

from __future__ import annotations

import json
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
