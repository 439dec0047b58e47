"""The stage pages document exactly the summary keys a real run writes (docs/stages/*.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukoflow.engine import docs
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

STAGE_SUMMARIES = ("synthetic", "holdout", "ingest", "curation", "detection", "classification", "ensemble",
                   "submission")
CONDITIONAL = "(only "  # a bullet with this may be absent from a run (e.g. synthetic-only figures)


def documented_keys() -> dict[str, dict[str, str]]:
    documented: dict[str, dict[str, str]] = {}
    for stage in docs.STAGES:
        page = (REPO / "docs" / "stages" / f"{stage.slug}.md").read_text()
        for path, keys in docs.documented_summary_keys(page).items():
            documented.setdefault(path, {}).update(keys)
    return documented


def summary_documentation_problems(run: Path) -> list[str]:
    """Differences between the stage summaries of a finished run and their documented keys."""
    documented, problems = documented_keys(), []
    for stage in STAGE_SUMMARIES:
        relative = f"results/{stage}/summary.json"
        if (run / relative).exists() and relative not in documented:
            problems.append(f"{relative} is not documented on any stage page")
    for relative, keys in documented.items():
        if not (run / relative).exists():
            continue
        actual = set(json.loads((run / relative).read_text()))
        problems += [f"{relative}: key {key!r} is not documented" for key in sorted(actual - set(keys))]
        problems += [f"{relative}: documented key {key!r} is not written (mark it '(only ...)' if conditional)"
                     for key in sorted(set(keys) - actual) if CONDITIONAL not in keys[key]]
    return problems


def test_stage_pages_document_every_summary_key_of_the_tiny_run(tiny_run):
    assert summary_documentation_problems(tiny_run) == []
