"""The house plan, read from the code: packages in layers, their imports, rule -> entry mapping.

Layers, lowest first: a module may import its own package and any lower layer, never a higher
one. Stage packages follow the method's order (a stage may use what an earlier stage made).
`tests/test_architecture.py` checks the imports against the layers and for circles, and
`docs/architecture.md` is generated from these functions (`python -m leukoflow.engine.docs`): the
layers, the rule -> entry -> results mapping (read from the rule files and the three-line
scripts) and the package tree.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
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
    known = modules()
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
                yield candidate if candidate in known else base


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


# ----------------------------------------------------------------------------- rules -> entries -> results

REPO = PACKAGE_ROOT.parents[1]
RULES_DIR = REPO / "workflow" / "rules"
SCRIPTS_DIR = REPO / "workflow" / "scripts"
NOT_CONVERTED = "(not yet converted)"
_RULE = re.compile(r"^(?P<indent>[ ]*)rule (?P<name>\w+):", re.MULTILINE)
_CONSTANT = re.compile(r'^(?P<name>[A-Z][A-Z0-9_]*) = (?P<f>f?)"(?P<value>[^"]*)"\s*$', re.MULTILINE)
_LITERAL = re.compile(r'(?P<f>f?)"(?P<value>[^"]*)"')


@dataclass(frozen=True)
class RuleLink:
    """One rule: where it is defined, the package entry its script binds, the files it writes."""

    rule_file: str
    rule: str
    entry: str  # `leukoflow.<stage>.<rule>`, NOT_CONVERTED, or "" for a rule without a script
    outputs: tuple[str, ...]


RUN_RULE_IMPORT = "from leukoflow.engine.runtime import run_rule"
_ENTRY_IMPORT = re.compile(r"from (?P<package>leukoflow\.\w+) import (?P<entry>\w+)")


def script_shape_problem(script: Path) -> str | None:
    """Why a rule script is not the three-line binding of its entry, or None when it is."""
    lines = _statements(script)
    if len(lines) != 3:
        return f"{script.name}: {len(lines)} statements, the convention is three lines"
    entry_import = _ENTRY_IMPORT.fullmatch(lines[0])
    if entry_import is None or entry_import.group("entry") != script.stem:
        return f"{script.name}: the first line must import the entry {script.stem} from its stage package"
    if lines[1] != RUN_RULE_IMPORT:
        return f"{script.name}: the second line must be {RUN_RULE_IMPORT!r}"
    if lines[2] != f"run_rule(snakemake, {script.stem})":
        return f"{script.name}: the third line must be 'run_rule(snakemake, {script.stem})'"
    return None


def entry_of_script(script: Path) -> str:
    """The entry a three-line script binds (`leukoflow.<stage>.<rule>`), else NOT_CONVERTED."""
    if script_shape_problem(script) is not None:
        return NOT_CONVERTED
    return f"{_ENTRY_IMPORT.fullmatch(_statements(script)[0]).group('package')}.{script.stem}"


def _statements(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]


def rule_links(rules_dir: Path = RULES_DIR, scripts_dir: Path = SCRIPTS_DIR) -> list[RuleLink]:
    """Every rule of the rule files, in the Snakefile's include order, read from the text (no Snakemake parse)."""
    included = re.findall(r'^include: "workflow/rules/(\w+\.smk)"', (rules_dir.parents[1] / "Snakefile").read_text(), re.M)
    files = sorted(rules_dir.glob("*.smk"), key=lambda path: (included.index(path.name) if path.name in included
                                                               else len(included), path.name))
    constants = _constants([path.read_text() for path in files])
    links = []
    for path in files:
        text = path.read_text()
        for match in _RULE.finditer(text):
            sections = _sections(text, match)
            script = "".join(sections.get("script", [])).strip().strip('"')
            entry = entry_of_script(scripts_dir / Path(script).name) if script else ""
            outputs = _outputs(sections.get("output", []), constants)
            links.append(RuleLink(path.name, match.group("name"), entry, outputs))
    return links


def _constants(texts: list[str]) -> dict[str, str]:
    """Module-level string constants of the rule files (`REPORT_DIR = "results/report"`), f-strings resolved."""
    found = {m.group("name"): (m.group("f"), m.group("value")) for text in texts for m in _CONSTANT.finditer(text)}
    resolved: dict[str, str] = {}
    for name, (_, value) in found.items():
        resolved[name] = value
    for _ in range(3):  # constants built from constants
        resolved = {name: _fill(value, resolved) if found[name][0] else value for name, value in resolved.items()}
    return resolved


def _fill(value: str, constants: dict[str, str]) -> str:
    filled = re.sub(r"(?<!\{)\{([A-Z][A-Z0-9_]*)\}(?!\})", lambda m: constants.get(m.group(1), m.group(0)), value)
    return filled


def _sections(text: str, rule: re.Match) -> dict[str, list[str]]:
    """The rule's keyword sections (`output:`, `script:`, ...) as their raw lines."""
    indent = len(rule.group("indent"))
    sections: dict[str, list[str]] = {}
    current = None
    for line in text[rule.end():].splitlines()[1:]:
        depth = len(line) - len(line.lstrip())
        if line.strip() and depth <= indent:
            break
        keyword = re.fullmatch(r"(\w+):\s*(.*)", line.strip()) if depth == indent + 4 else None
        if keyword:
            current = sections.setdefault(keyword.group(1), [])
            if keyword.group(2):
                current.append(keyword.group(2))
        elif current is not None and line.strip():
            current.append(line.rstrip())
    return sections


def _outputs(lines: list[str], constants: dict[str, str]) -> tuple[str, ...]:
    """Each output of an `output:` section as `name: path` (or the bare path), read with `ast`."""
    if not lines:
        return ()
    call = ast.parse("outputs(\n" + "\n".join(lines) + "\n)", mode="eval").body
    named = [("", value) for value in call.args] + [(keyword.arg or "", keyword.value) for keyword in call.keywords]
    return tuple(f"{name}: {_path(value, constants)}" if name else _path(value, constants) for name, value in named)


def _path(node: ast.expr, constants: dict[str, str]) -> str:
    """The file pattern of an output expression: `report(f"{DIR}/x.png", ...)` -> `results/.../x.png`."""
    while isinstance(node, ast.Call) and node.args:  # report(...), directory(...), temp(...)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "join":  # os.path.join(DIR, "x.csv")
            return "/".join(_path(part, constants) for part in node.args)
        node = node.args[0]
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.Name):
        return constants.get(node.id, node.id)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(part.value) if isinstance(part, ast.Constant) else "{" + _path(part.value, constants) + "}"
                       if not isinstance(part.value, ast.Name) or part.value.id not in constants
                       else constants[part.value.id] for part in node.values)
    return ast.unparse(node)


# ----------------------------------------------------------------------------- the page

def _docstring_line(path: Path) -> str:
    module = ast.parse(path.read_text())
    doc = ast.get_docstring(module) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def package_tree() -> list[str]:
    """The package as an indented list, in layer order: unit, then its modules with their first docstring line."""
    lines = []
    found = modules()
    for index, members in enumerate(LAYERS):
        for unit in members:
            name = f"leukoflow.{unit}"
            if name not in found:
                continue
            lines.append(f"- `{name}` (layer {index}): {_docstring_line(found[name])}")
            for module in sorted(m for m in found if m.startswith(name + ".")):
                lines.append(f"  - `{module.removeprefix(name + '.')}`: {_docstring_line(found[module])}")
    return lines


def layer_lines() -> list[str]:
    """One row per layer: its units, and the lower units they import today (from the code)."""
    graph = import_graph()
    rows = ["| layer | units | imports (measured from the code) |", "|---|---|---|"]
    for index, members in enumerate(LAYERS):
        used = sorted({unit_of(target) for module, targets in graph.items() if unit_of(module) in members
                       for target in targets if unit_of(target) not in members})
        rows.append(f"| {index} | {', '.join(f'`{m}`' for m in members)} | {', '.join(f'`{u}`' for u in used) or '-'} |")
    return rows


def architecture_page() -> str:
    """docs/architecture.md, generated by `python -m leukoflow.engine.docs` (tests/test_docs.py checks it)."""
    links = rule_links()
    converted = sum(link.entry.startswith("leukoflow.") for link in links)
    scripted = sum(bool(link.entry) for link in links)
    lines = [
        "# Architecture",
        "",
        "Generated from the code by `python -m leukoflow.engine.docs` (`leukoflow.engine.architecture`);",
        "do not edit by hand. `tests/test_architecture.py` checks the layers, circles, module sizes and",
        "script shape; `tests/test_docs.py` checks that this page is current.",
        "",
        "## Import layers",
        "",
        "Lowest first. A module imports its own package and lower layers only; stage packages follow",
        "the method's order, so a stage may use what an earlier stage made.",
        "",
        *layer_lines(),
        "",
        "## Rule -> entry -> results",
        "",
        "Every `workflow/scripts/<rule>.py` is three lines that bind the job to the keyword-only entry",
        "`leukoflow.<stage>.<rule>` (`leukoflow.engine.runtime.run_rule`): named inputs, outputs and",
        "params become its arguments and the summary it returns is written to `output.summary`.",
        f"{converted} of {scripted} scripted rules follow it.",
        "",
        "| rule file | rule | entry | results |",
        "|---|---|---|---|",
        *(f"| `{link.rule_file}` | `{link.rule}` | {f'`{link.entry}`' if link.entry.startswith('leukoflow') else link.entry or '-'} | "
          + "<br>".join(f"`{output}`" for output in link.outputs) + " |" for link in links),
        "",
        "## Package tree",
        "",
        *package_tree(),
    ]
    return "\n".join(lines) + "\n"
