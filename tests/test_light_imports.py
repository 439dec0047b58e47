"""Light jobs stay light: importing a rule's entry loads neither torch nor MLflow unless it trains.

Every job pays its imports before its entry starts (several seconds for torch, MLflow and
ultralytics on the 2-core machine), so stage packages import an entry's module only when the
entry is read (`leukoflow.engine.lazy`) and MLflow is imported only when a tracked job opens its run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import leukoflow.detection
from leukoflow.engine import lazy

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
# The entries that train or run a network: they import torch (never MLflow) when imported.
TORCH_RULES = {"train_detector", "predict_oof", "predict_test_boxes", "train_classifier"}
HEAVY = ("torch", "torchvision", "ultralytics", "timm", "mlflow")

# Imports each light rule's entry line in turn and reports the heavy modules loaded after each one.
PROBE = """
import json, sys
heavy = {heavy!r}
loaded = {{}}
for line in {lines!r}:
    exec(line)
    loaded[line] = [m for m in heavy if m in sys.modules]
print(json.dumps(loaded))
"""


def _entry_import(script: Path) -> str:
    return script.read_text().splitlines()[0]


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          cwd=REPO).stdout


def test_light_rules_import_neither_torch_nor_mlflow():
    light = sorted(p for p in SCRIPTS.glob("*.py") if p.stem not in TORCH_RULES)
    assert {"ingest", "deduplicate", "repair_boxes", "make_folds", "fit_oof", "flag_noisy_boxes",
            "cache_classifier_inputs", "search_ensemble_weights", "build_submission"} <= {p.stem for p in light}
    lines = [_entry_import(script) for script in light] + ["from leukoflow.engine.runtime import run_rule"]
    loaded = json.loads(_python(PROBE.format(heavy=HEAVY, lines=lines)))
    assert {line: mods for line, mods in loaded.items() if mods} == {}


@pytest.mark.slow  # four interpreters importing torch: ~12 s, the unit tier stays under 2 minutes
def test_training_rules_import_torch_but_not_mlflow():
    for rule in sorted(TORCH_RULES):
        line = _entry_import(SCRIPTS / f"{rule}.py")
        loaded = json.loads(_python(PROBE.format(heavy=HEAVY, lines=[line])))[line]
        assert "torch" in loaded and "mlflow" not in loaded, (rule, loaded)


def test_a_tracked_entry_with_tracking_off_never_imports_mlflow(tmp_path):
    code = f"""
import sys
from types import SimpleNamespace
from leukoflow.engine.runtime import run_rule, tracked

@tracked
def entry(*, size):
    return {{"size": size}}

class Section(dict):
    __getattr__ = dict.__getitem__

job = SimpleNamespace(rule="light", threads=1, log=[], config={{}}, input=Section(), params=Section(size=3),
                      output=Section(summary={str(tmp_path / "summary.json")!r}))
run_rule(job, entry)
print("mlflow" in sys.modules)
"""
    assert _python(code).strip() == "False"
    assert json.loads((tmp_path / "summary.json").read_text())["size"] == 3


def test_stage_packages_still_expose_their_entries_and_modules():
    assert "fit_oof" in leukoflow.detection.__all__ and "fit_oof" in dir(leukoflow.detection)
    assert leukoflow.detection.fit_oof.__module__ == "leukoflow.detection.fitting"
    from leukoflow.detection import datasets, export_yolo

    assert export_yolo is datasets.export_yolo


def test_an_unknown_name_is_an_attribute_error():
    getattr_, _ = lazy.lazy_entries("leukoflow.detection", {})
    with pytest.raises(AttributeError, match="no_such_rule"):
        getattr_("no_such_rule")


def test_rule_scripts_allocate_arrow_memory_with_the_system_allocator_unless_told_otherwise():
    probe = ("from leukoflow.engine.runtime import run_rule\n"
             "import pyarrow\nprint(pyarrow.default_memory_pool().backend_name)")
    env = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = str(REPO / "workflow")
    chosen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True, cwd=REPO)
    assert chosen.stdout.strip() == "system"
    told = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                          env={**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"})
    assert told.stdout.strip() == "mimalloc"
