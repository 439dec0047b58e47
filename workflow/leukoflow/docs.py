"""Generate the documents that must never drift from their sources.

`python -m leukoflow.docs` rewrites config/README.md (every config key, from the schema's
descriptions), docs/tables.md (every inter-stage table, from `leukoflow.tables`) and
envs/leukoflow.yaml (the conda form of requirements.lock). `--check` fails when any is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from leukoflow import tables

REPO = Path(__file__).resolve().parents[2]
PYTHON_VERSION = "3.11"


def config_reference(schema: dict[str, Any]) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `config/schema.yaml` by `python -m leukoflow.docs`; do not edit by hand.",
        "Every run validates its configuration against that schema: an unknown key or a value out of",
        "range stops the workflow with a message naming the key.",
        "",
        "| key | type | allowed | description |",
        "|---|---|---|---|",
    ]
    lines += [_config_row(key, node) for key, node in _walk_schema(schema)]
    return "\n".join(lines) + "\n"


def _walk_schema(node: dict[str, Any], prefix: str = ""):
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, child
        if child.get("type") == "object":
            yield from _walk_schema(child, f"{path}.")
        elif child.get("type") == "array" and child.get("items", {}).get("type") == "object":
            yield from _walk_schema(child["items"], f"{path}[].")


def _config_row(key: str, node: dict[str, Any]) -> str:
    allowed = []
    if "enum" in node:
        allowed.append(" / ".join(f"`{value}`" for value in node["enum"]))
    for bound, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if bound in node:
            allowed.append(f"{symbol} {node[bound]}")
    description = node.get("description", "").replace("|", "\\|").replace("\n", " ")
    return f"| `{key}` | {node.get('type', '')} | {', '.join(allowed)} | {description} |"


def tables_reference() -> str:
    lines = [
        "# Tables between stages",
        "",
        "Generated from `workflow/leukoflow/tables.py` by `python -m leukoflow.docs`; do not edit by hand.",
        "Each table is validated against this schema when it is written and when it is read.",
    ]
    for schema in tables.SCHEMAS.values():
        lines += ["", f"## `{schema.name}`: `{schema.path_pattern}`", "", schema.description, "",
                  "| column | type | description |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.dtype} | {c.description} |" for c in schema.columns]
    return "\n".join(lines) + "\n"


def conda_environment(lock_text: str) -> str:
    pins = [line.strip() for line in lock_text.splitlines() if line.strip() and not line.startswith("#")]
    environment = {
        "name": "leukoflow",
        "channels": ["conda-forge", "nodefaults"],
        "dependencies": [f"python={PYTHON_VERSION}", "pip", {"pip": pins}],
    }
    header = "# Generated from requirements.lock by `python -m leukoflow.docs`: the same pins for `--sdm conda`.\n"
    return header + yaml.safe_dump(environment, sort_keys=False)


def generated_documents(repo: Path = REPO) -> dict[Path, str]:
    schema = yaml.safe_load((repo / "config" / "schema.yaml").read_text())
    return {
        repo / "config" / "README.md": config_reference(schema),
        repo / "docs" / "tables.md": tables_reference(),
        repo / "envs" / "leukoflow.yaml": conda_environment((repo / "requirements.lock").read_text()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_documents().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
