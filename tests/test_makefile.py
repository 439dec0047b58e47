"""The virtualenv is keyed on the lock file's hash: reuse is instant, a changed pin rebuilds."""

import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO


def _dry_run(directory: Path) -> str:
    return subprocess.run(["make", "-n", "setup"], cwd=directory, capture_output=True, text=True, check=True).stdout


def _project_copy(tmp_path: Path) -> Path:
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_unchanged_lock_reuses_the_environment(tmp_path):
    project = _project_copy(tmp_path)
    first = _dry_run(project)
    assert "pip install" in first and "-r requirements.lock" in first
    for line in first.splitlines():
        if line.startswith("touch "):
            target = project / line.split()[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    (project / "requirements.lock").touch()  # a fresh clone's timestamps must not matter
    assert "Nothing to be done" in _dry_run(project), "nothing should run when the pins are unchanged"


def test_changed_pin_rebuilds_the_environment(tmp_path):
    project = _project_copy(tmp_path)
    for line in _dry_run(project).splitlines():
        if line.startswith("touch "):
            (project / line.split()[1]).parent.mkdir(parents=True, exist_ok=True)
            (project / line.split()[1]).touch()
    lock = project / "requirements.lock"
    lock.write_text(lock.read_text().replace("pytest==", "pytest==0.0.0+changed#"))
    rebuilt = _dry_run(project)
    assert "rm -rf .venv" in rebuilt and "-r requirements.lock" in rebuilt


def test_run_renders_the_report_after_the_workflow(tmp_path):
    commands = subprocess.run(["make", "-n", "run"], cwd=_project_copy(tmp_path), capture_output=True, text=True,
                              check=True).stdout
    run_line = next(line for line in commands.splitlines() if "snakemake --cores" in line)
    assert "--report results/report.html --report-after-run" in run_line


def test_fast_tier_leaves_out_the_e2e_and_slow_markers(tmp_path):
    from tests.conftest import UNIT_TIER

    commands = subprocess.run(["make", "-n", "test-fast"], cwd=_project_copy(tmp_path), capture_output=True, text=True,
                              check=True).stdout
    fast = next(line for line in commands.splitlines() if "-m pytest" in line)
    assert f'-m "{UNIT_TIER}"' in fast and " -n 2 " in fast
    full = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    suite = next(line for line in full.splitlines() if "-m pytest" in line)
    assert " -m \"" not in suite.split("-m pytest", 1)[1]  # CI runs every tier
    assert " -n 2 --dist loadfile" in suite  # whole files per worker: module fixtures run once
