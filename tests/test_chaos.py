"""Crash safety: kill -9 of the tiny workflow at seeded random moments, the README command recovers.

One continuing sequence: start the workflow, SIGKILL Snakemake after a random delay, start it again
with the same command (no --unlock, no extra flag: profiles/default and the Snakefile recover), ...
then let the last start finish. The final tables must equal an uninterrupted run's, no rule script
may outlive its killed Snakemake, and no partial or stray file may survive.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import NO_TRACKING_CONFIG, REPO, SNAKEMAKE, TINY_CONFIG, result_tables, run_workflow

pytestmark = pytest.mark.e2e

KILLS = 12
SEED = 17
DELAY_SHARE = (0.08, 0.25)  # each delay, as a share of the uninterrupted run's wall time
ORPHAN_GRACE_S = 3.0
_SCRIPT = re.compile(r"\.([A-Za-z0-9_]+)\.py$")
FIGURES = os.environ.get("LEUKOFLOW_CHAOS_FIGURES")  # optional JSON file for docs/reliability.md


def _readme_command(workdir: Path) -> list[str]:
    """The README's run command on the tiny configuration (profiles/default applies)."""
    return [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
            "--configfile", str(TINY_CONFIG), str(NO_TRACKING_CONFIG)]


def _start(workdir: Path, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.Popen(_readme_command(workdir), cwd=workdir, env=env, stdout=log, stderr=log)


def _running_rules(process: psutil.Process) -> tuple[list[str], list[psutil.Process]]:
    """Rule scripts (from Snakemake's temporary script names) and every descendant process."""
    try:
        descendants = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return [], []
    rules = set()
    for child in descendants:
        try:
            rules.update(m.group(1) for part in child.cmdline() if (m := _SCRIPT.search(part)))
        except psutil.NoSuchProcess:
            continue
    return sorted(rules), descendants


def _orphans(descendants: list[psutil.Process]) -> list[str]:
    deadline = time.monotonic() + ORPHAN_GRACE_S
    alive = descendants
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [" ".join(p.cmdline()[:3]) for p in alive if p.is_running()]


def _recovery_errors(log: Path) -> int:
    """Starts that stopped on a stale lock or on incomplete files instead of recovering."""
    return len(re.findall(r"LockException|IncompleteFilesException|Directory cannot be locked", log.read_text()))


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in (run / "results").rglob("*") if p.is_file()}


def test_kill_9_anywhere_recovers_with_the_readme_command(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    started = time.monotonic()
    run_workflow(reference, overlays=(NO_TRACKING_CONFIG,))
    reference_seconds = time.monotonic() - started

    chaos = tmp_path / "chaos"
    chaos.mkdir()
    rng = random.Random(SEED)
    kills, killed_rules, orphans, restarts_failed = [], [], [], 0
    started = time.monotonic()
    with open(tmp_path / "chaos.log", "w") as log:
        for _ in range(KILLS):
            process = _start(chaos, log)
            delay = rng.uniform(*DELAY_SHARE) * reference_seconds
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                rules, descendants = _running_rules(psutil.Process(process.pid))
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills.append(round(time.monotonic() - started, 1))
                killed_rules.append(rules)
                orphans += _orphans(descendants)
                continue
            restarts_failed += process.returncode != 0
            break
        final = _start(chaos, log)
        final_rc = final.wait()
    chaos_seconds = time.monotonic() - started

    equal = result_tables(chaos) == result_tables(reference)
    figures = {
        "kills": len(kills), "kill_times_s": kills, "rules_running_at_kill": killed_rules,
        "restarts": len(kills) + 1, "orphans": orphans,
        "final_exit_status": final_rc, "tables_equal": equal,
        "reference_seconds": round(reference_seconds, 1), "chaos_seconds": round(chaos_seconds, 1),
        "incomplete_markers": sorted(p.name for p in (chaos / ".snakemake" / "incomplete").glob("*")),
        "lock_or_incomplete_errors": _recovery_errors(tmp_path / "chaos.log"),
        "files_only_in_chaos": sorted(_files(chaos) - _files(reference)),
        "files_only_in_reference": sorted(_files(reference) - _files(chaos)),
    }
    if FIGURES:
        Path(FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    assert final_rc == 0, (tmp_path / "chaos.log").read_text()[-4000:]
    assert len(kills) >= 10, figures
    assert restarts_failed == 0 and not figures["lock_or_incomplete_errors"], figures
    assert not orphans, figures
    assert any("train" in rule for rules in killed_rules for rule in rules), figures
    assert equal, sorted(k for k, v in result_tables(chaos).items() if result_tables(reference).get(k) != v)
    assert not figures["incomplete_markers"]
    assert not figures["files_only_in_chaos"] and not figures["files_only_in_reference"], figures
