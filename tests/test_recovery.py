"""Recovery pieces on their own: stale locks are cleared, live ones kept; scripts die with Snakemake."""

from __future__ import annotations

import pytest

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import yaml

from leukoflow.engine import recovery
from tests.conftest import REPO


def _lock(workdir: Path) -> Path:
    locks = workdir / recovery.LOCKS_DIR
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/ingest/summary.json\n")
    return locks


def test_locks_of_a_dead_run_are_removed(tmp_path):
    locks = _lock(tmp_path)
    holders = tmp_path / recovery.HOLDERS_DIR
    holders.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (holders / str(dead.pid)).write_text(f"{socket.gethostname()} 12345.0")
    assert recovery.clear_stale_locks(tmp_path) is True
    assert not locks.exists()
    assert sorted(p.name for p in holders.iterdir()) == [str(os.getpid())]


def test_locks_of_a_live_run_are_kept(tmp_path):
    locks = _lock(tmp_path)
    holders = tmp_path / recovery.HOLDERS_DIR
    holders.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (holders / str(live.pid)).write_text(f"{socket.gethostname()} {psutil.Process(live.pid).create_time()!r}")
        assert recovery.clear_stale_locks(tmp_path) is False
        assert locks.exists()
    finally:
        live.kill()
        live.wait()


def test_a_job_process_never_clears_locks(tmp_path, monkeypatch):
    locks = _lock(tmp_path)
    monkeypatch.setattr(sys, "argv", ["snakemake", "--target-jobs", "ingest:", "--mode", "remote"])
    assert recovery.clear_stale_locks(tmp_path) is False
    assert locks.exists()


def test_default_profile_reruns_incomplete_jobs():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True


def test_script_dies_with_its_snakemake(tmp_path):
    """Snakemake -> bash -c -> python script: killing Snakemake with SIGKILL ends the script too."""
    fake_snakemake = tmp_path / "snakemake"
    fake_snakemake.symlink_to(sys.executable)
    beat = tmp_path / "beat"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from leukoflow.engine import recovery
        recovery.die_with_snakemake()
        while True:
            Path({str(beat)!r}).write_text(str(time.time()))
            time.sleep(0.1)
    """))
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen(["/bin/bash", "-c", "set -e; {sys.executable} {script}; true"])
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    snakemake = subprocess.Popen([str(fake_snakemake), "-c", parent], env=env)
    deadline = time.monotonic() + 60
    while not beat.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert beat.exists(), "the script never started"
    script_processes = [p for p in psutil.Process(snakemake.pid).children(recursive=True)
                        if str(script) in " ".join(p.cmdline())]
    os.kill(snakemake.pid, signal.SIGKILL)
    snakemake.wait()
    gone, alive = psutil.wait_procs(script_processes, timeout=3)
    assert not alive, [p.cmdline() for p in alive]
    last = beat.read_text()
    time.sleep(0.5)
    assert beat.read_text() == last  # nothing writes after Snakemake is gone


@pytest.mark.slow  # a subprocess or a real store: kept out of the unit tier (make test-fast)
def test_script_orphaned_while_starting_exits_before_writing(tmp_path):
    """Snakemake killed while its script is still importing: the first leukoflow import ends it."""
    fake_snakemake = tmp_path / "snakemake"
    fake_snakemake.symlink_to(sys.executable)
    started, wrote = tmp_path / "started", tmp_path / "wrote"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from snakemake.iocontainers import Snakemake
        snakemake = Snakemake.__new__(Snakemake)  # what Snakemake's script preamble defines
        Path({str(started)!r}).touch()
        time.sleep(3)  # slow imports of a real stage
        import leukoflow.tables
        Path({str(wrote)!r}).touch()
    """))
    parent = f"import subprocess, time; subprocess.Popen(['/bin/bash', '-c', 'set -e; {sys.executable} {script}; true']); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    snakemake = subprocess.Popen([str(fake_snakemake), "-c", parent], env=env)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(snakemake.pid, signal.SIGKILL)
    snakemake.wait()
    time.sleep(6)
    assert started.exists() and not wrote.exists()
