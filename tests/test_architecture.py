"""The house plan holds: imports only go down the layers, no circles, modules stay readable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from leukoflow.engine import architecture

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
LONG_BY_DESIGN = "long by design:"


def test_every_unit_is_in_a_layer():
    for module in architecture.modules():
        if module != "leukoflow":
            architecture.layer_of(architecture.unit_of(module))


def test_no_upward_import():
    upward = []
    for module, targets in architecture.import_graph().items():
        if module == "leukoflow":
            continue
        here = architecture.layer_of(architecture.unit_of(module))
        for target in targets:
            there = architecture.layer_of(architecture.unit_of(target))
            if there > here:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = {module: {t for t in targets if not t.endswith("__init__")} for module, targets in architecture.import_graph().items()}
    # a package's __init__ re-exports its modules: an edge package -> own module is not a circle
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(architecture.modules()))
def test_module_is_short_or_says_why(module):
    path = architecture.modules()[module]
    lines = path.read_text().splitlines()
    if len(lines) > MAX_MODULE_LINES:
        head = "\n".join(lines[:5]).lower()
        assert LONG_BY_DESIGN in head, f"{path.relative_to(REPO)} has {len(lines)} lines (> {MAX_MODULE_LINES})"


@pytest.mark.parametrize("script", sorted((REPO / "workflow" / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_script_is_the_three_line_binding(script):
    problem = architecture.script_shape_problem(script)
    assert problem is None, problem


# ----------------------------------------------------------------------------- rule -> entry -> results (docs/architecture.md)

def test_every_rule_is_on_the_architecture_page_with_its_results():
    links = architecture.rule_links()
    defined = {m.group(1) for path in (REPO / "workflow" / "rules").glob("*.smk")
               for m in re.finditer(r"^\s*rule (\w+):", path.read_text(), flags=re.M)}
    assert {link.rule for link in links} == defined
    page = architecture.architecture_page()
    for link in links:
        assert f"| `{link.rule}` |" in page
        assert link.outputs, f"rule {link.rule}: no output read from its rule file"
    metrics = next(link for link in links if link.rule == "collect_metrics")
    assert metrics.entry == "leukoflow.report.collect_metrics" and metrics.outputs == ("metrics: results/metrics.json",)


def test_a_converted_entry_is_exposed_by_its_stage_package():
    import importlib
    import inspect

    for link in architecture.rule_links():
        if not link.entry.startswith("leukoflow."):
            continue
        package, _, rule = link.entry.rpartition(".")
        entry = getattr(importlib.import_module(package), rule, None)
        assert callable(entry), f"{package} does not expose the entry {rule} (add it to its __init__)"
        parameters = inspect.signature(entry).parameters.values()
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters), f"{link.entry} takes positional arguments"


def test_entry_of_script_tells_the_convention_from_older_shapes(tmp_path):
    good = tmp_path / "make_folds.py"
    good.write_text("from leukoflow.curation import make_folds\nfrom leukoflow.engine.runtime import run_rule\n"
                    "run_rule(snakemake, make_folds)\n")
    assert architecture.entry_of_script(good) == "leukoflow.curation.make_folds"
    old = tmp_path / "deduplicate.py"
    old.write_text("from leukoflow.curation import duplicates\nfrom leukoflow.engine.runtime import run_rule\n\n\n"
                   "def run(smk):\n    return duplicates.run(**smk.input)\n\n\nrun_rule(snakemake, run)\n")
    assert architecture.entry_of_script(old) == architecture.NOT_CONVERTED
    assert "5 statements" in architecture.script_shape_problem(old)
    other_entry = tmp_path / "make_crops.py"
    other_entry.write_text(good.read_text())
    assert "import the entry make_crops" in architecture.script_shape_problem(other_entry)
