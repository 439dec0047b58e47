"""Crash safety: kill -9 of the tiny workflow at seeded random moments, the README command recovers.

One continuing sequence: start the workflow, SIGKILL Snakemake at a seeded random moment, start it
again with the same command (no --unlock, no extra flag: profiles/default and the Snakefile
recover), ... then let the last start finish. The kill moments are drawn over the whole DAG: kill i
comes once the run as a whole has finished its i-th seeded number of jobs, plus a random wait, so
kills land in startup, curation, training and the ensemble alike and every restart makes progress.
The final tables must equal an uninterrupted run's, no rule script may outlive its killed
Snakemake, and no partial or stray file may survive. This is also the suite's determinism check:
two runs from scratch in two folders (one of them killed ten times) give identical tables.
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

from tests.conftest import NO_TRACKING_CONFIG, REPO, SNAKEMAKE, TINY_CONFIG, result_tables

pytestmark = pytest.mark.e2e

KILLS = 10
SEED = 17
JITTER_S = (0.0, 2.5)  # after the chosen job finished, a random extra wait before the kill
ORPHAN_GRACE_S = 10.0  # a loaded 2-core machine: the script's watcher polls every 0.5 s
_SCRIPT = re.compile(r"\.([A-Za-z0-9_]+)\.py$")
_FINISHED = re.compile(r"^Finished jobid: ", re.MULTILINE)
_TOTAL = re.compile(r"^total\s+(\d+)$", re.MULTILINE)
FIGURES = os.environ.get("LEUKOFLOW_CHAOS_FIGURES")  # optional JSON file for docs/reliability.md


def _readme_command(workdir: Path) -> list[str]:
    """The README's run command on the tiny configuration (profiles/default applies)."""
    return [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
            "--configfile", str(TINY_CONFIG), str(NO_TRACKING_CONFIG)]


def _start(workdir: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    with open(log_path, "w") as log:
        return subprocess.Popen(_readme_command(workdir), cwd=workdir, env=env, stdout=log, stderr=log)


def _wait_for_target(process: subprocess.Popen, log_path: Path, rng: random.Random, finished_before: int,
                     targets: list[int], kill: int) -> bool:
    """Wait until the run as a whole has finished targets[kill] jobs, then a random moment more;
    False when the run ended first."""
    while process.poll() is None:
        text = log_path.read_text()
        total = _TOTAL.search(text)
        if total and not targets:
            targets += sorted(rng.sample(range(1, int(total.group(1))), KILLS))
        if targets and finished_before + len(_FINISHED.findall(text)) >= targets[kill]:
            time.sleep(rng.uniform(*JITTER_S))
            return process.poll() is None
        time.sleep(0.2)
    return False


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
    gone, alive = psutil.wait_procs(descendants, timeout=ORPHAN_GRACE_S)
    return [" ".join(p.cmdline()[:3]) for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _recovery_errors(log: Path) -> int:
    """Starts that stopped on a stale lock or on incomplete files instead of recovering."""
    return len(re.findall(r"LockException|IncompleteFilesException|Directory cannot be locked", log.read_text()))


def _files(run: Path) -> set[str]:
    """Every file under results/ except the tracking store (the reference run tracks, this one does not)."""
    return {str(p.relative_to(run)) for p in (run / "results").rglob("*")
            if p.is_file() and "mlartifacts" not in p.parts and not p.name.startswith("mlflow.db")}


def test_kill_9_anywhere_recovers_with_the_readme_command(request, tmp_path):
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    rng = random.Random(SEED)
    kills, killed_rules, orphans, targets = [], [], [], []
    finished_before, attempt = 0, 0
    started = time.monotonic()
    while True:
        log_path = tmp_path / f"chaos-{attempt}.log"
        process = _start(chaos, log_path)
        attempt += 1
        if len(kills) == KILLS or not _wait_for_target(process, log_path, rng, finished_before, targets, len(kills)):
            final_rc = process.wait()
            break
        rules, descendants = _running_rules(psutil.Process(process.pid))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(round(time.monotonic() - started, 1))
        killed_rules.append(rules)
        orphans += _orphans(descendants)
        finished_before += len(_FINISHED.findall(log_path.read_text()))
    chaos_seconds = time.monotonic() - started

    # The shared uninterrupted run (its MLflow files are left out of the comparison), asked for
    # only now so that another pytest-xdist worker can build it while this one kills.
    reference = request.getfixturevalue("tiny_run")
    equal = result_tables(chaos) == result_tables(reference)
    figures = {
        "kills": len(kills), "kill_times_s": kills, "kill_after_finished_jobs": targets,
        "rules_running_at_kill": killed_rules, "starts": attempt, "orphans": orphans,
        "final_exit_status": final_rc, "tables_equal": equal,
        "chaos_seconds": round(chaos_seconds, 1),
        "incomplete_markers": sorted(p.name for p in (chaos / ".snakemake" / "incomplete").glob("*")),
        "lock_or_incomplete_errors": sum(_recovery_errors(log) for log in tmp_path.glob("chaos-*.log")),
        "files_only_in_chaos": sorted(_files(chaos) - _files(reference)),
        "files_only_in_reference": sorted(_files(reference) - _files(chaos)),
    }
    if FIGURES:
        Path(FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    assert final_rc == 0, (tmp_path / f"chaos-{attempt - 1}.log").read_text()[-4000:]
    assert len(kills) >= 10, figures
    assert not figures["lock_or_incomplete_errors"], figures
    assert not orphans, figures
    assert any("train" in rule for rules in killed_rules for rule in rules), figures
    assert equal, sorted(k for k, v in result_tables(chaos).items() if result_tables(reference).get(k) != v)
    assert not figures["incomplete_markers"]
    assert not figures["files_only_in_chaos"] and not figures["files_only_in_reference"], figures
