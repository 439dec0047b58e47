"""Shared test helpers: repository paths, the read-only reference folder, the tiny workflow run.

Test tiers: `make test` runs everything (CI); `make test-fast` (UNIT_TIER) leaves out the tests
marked `e2e` (they run snakemake) and `slow` (training/prediction beyond a few steps). A test that
uses the shared `tiny_run` fixture is marked `e2e` here, so it cannot slip into the unit tier.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def shared_path(*parts: str) -> Path:
    """A file of ../shared, or a clean skip where the reference folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is not present beside the repository")
    return path


NO_TRACKING_CONFIG = REPO / "tests" / "configs" / "notrack.yaml"
UNIT_TIER = "not e2e and not slow"  # `make test-fast`
E2E_FIXTURES = ("tiny_run",)


# Test files by measured cost, heaviest first (BENCHMARKS.md, "Test suite"): under
# `make test`, pytest-xdist hands whole files to the next free worker in collection order, so the
# long ones start first and the short ones fill the gaps. Files not listed follow, in path order.
HEAVY_FIRST = (
    "test_slurm.py", "test_workflow.py", "test_bccd.py", "test_chaos.py", "test_gpu_smoke.py",
    "test_packaging.py", "test_classification_workflow.py", "test_report.py", "test_reproduce.py", "test_dvc.py",
    "test_tracking.py", "test_docs_e2e.py",
)


def _cost_rank(item: pytest.Item) -> int:
    name = item.path.name
    return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in E2E_FIXTURES):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_cost_rank)  # stable: a file's tests keep their order


def run_workflow(workdir: Path, *extra: str, configfile: Path = TINY_CONFIG, cores: int = 2,
                 check: bool = True, overlays: tuple[Path, ...] = (), env: dict[str, str] | None = None,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the real snakemake on the repository's Snakefile with `workdir` as working directory."""
    command = [
        str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--cores", str(cores), "--configfile", str(configfile), *map(str, overlays), *extra,
    ]
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


TRAINING_LOGS = ("history.csv", "results.csv")  # per-epoch curves with a wall-clock `time` column


def _comparable_content(path: Path) -> bytes:
    if path.name in TRAINING_LOGS:
        import pandas as pd

        return pd.read_csv(path).drop(columns=["time"], errors="ignore").to_csv(index=False).encode()
    return path.read_bytes()


def result_tables(run: Path) -> dict[str, bytes]:
    """Every table and image under a run's results/, keyed by relative path, for run-to-run equality."""
    files = [path for pattern in ("*.csv", "*.parquet", "*.jpg") for path in (run / "results").rglob(pattern)
             if "mlartifacts" not in path.parts]  # MLflow's copies, absent when tracking is off
    return {str(path.relative_to(run)): _comparable_content(path) for path in files}


def _run_root(tmp_path_factory) -> Path:
    """The pytest run's temporary root: under pytest-xdist the folder all workers share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory) -> Path:
    """A folder for one test file's shared run, removed when the file is done unless one of its
    tests failed: the suite would otherwise keep every run until the end, and a CI disk is finite."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete tiny workflow run shared by the end-to-end tests of every xdist worker: the
    first worker to need it runs it under a file lock, the others wait for it and read it."""
    root = _run_root(tmp_path_factory)
    workdir, done = root / "tiny_run", root / "tiny_run.done"
    with FileLock(str(root / "tiny_run.lock")):
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            run_workflow(workdir)
            done.touch()
    return workdir
