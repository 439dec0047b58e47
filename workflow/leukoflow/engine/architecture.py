"""The house plan, read from the code: packages in layers, their imports, rule -> entry mapping.

Layers, lowest first: a module may import its own package and any lower layer, never a higher
one. Stage packages follow the method's order (a stage may use what an earlier stage made).
`tests/test_architecture.py` checks the imports against the layers and for circles, and
`docs/architecture.md` is generated from these functions (`python -m leukoflow.engine.docs`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("constants", "tables", "ledger", "boxes", "images", "csvio", "metric")
LAYERS: tuple[tuple[str, ...], ...] = (
    LEAVES,
    ("engine",),
    ("synthetic",),
    ("ingest",),
    ("curation",),
    ("detection",),
    ("classification",),
    ("ensemble",),
    ("inference",),
    ("report",),
    ("cli",),
)


def layer_of(unit: str) -> int:
    """The layer of a top-level unit (a leaf module or a subpackage) of leukoflow."""
    for index, members in enumerate(LAYERS):
        if unit in members:
            return index
    raise KeyError(f"leukoflow.{unit} is in no layer of leukoflow.engine.architecture.LAYERS")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (`leukoflow.curation.folds`)."""
    found = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, module: str) -> Iterator[str]:
    """The leukoflow modules a file imports (absolute or relative), at any depth of the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("leukoflow"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("leukoflow"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in modules() else base


def unit_of(module: str) -> str:
    """`leukoflow.curation.folds` -> `curation`; `leukoflow.tables` -> `tables`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, set[str]]:
    """module -> the leukoflow modules it imports (the package root `leukoflow` left out)."""
    graph = {}
    for module, path in modules().items():
        graph[module] = {target for target in imports_of(path, module) if target != "leukoflow" and target != module}
    return graph
