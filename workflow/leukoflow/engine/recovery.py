"""Recovery after a hard kill: stale Snakemake locks and rule scripts that outlive their Snakemake.

Snakemake writes `.snakemake/locks/` when a run starts and removes it when the run ends; after
`kill -9` the locks stay and every later run stops with LockException until `--unlock`. Each
Snakemake process that parses the Snakefile registers here (pid + process start time), so a lock
whose registered processes are all gone is known to be stale and is removed before Snakemake checks
it; a lock held by a live process is left alone (two concurrent runs still refuse each other).

A rule script runs under `bash -c` under Snakemake: a parent-death signal alone would fire on the
shell, not on Snakemake. `die_with_snakemake` watches the Snakemake process itself and ends the
script and its workers when it is gone, so no orphan writes outputs after its run was killed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

import psutil

HOLDERS_DIR = Path(".snakemake") / "leukoflow_holders"
LOCKS_DIR = Path(".snakemake") / "locks"
WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(holder: Path) -> bool:
    """A holder on another host (shared file system) cannot be checked: it counts as alive."""
    try:
        host, started = holder.read_text().split()
        pid, started_at = int(holder.name), float(started)
    except (ValueError, OSError):
        return False
    return host != socket.gethostname() or _start_time(pid) == started_at


def _is_job_process(argv: list[str]) -> bool:
    """Snakemake re-invoked for one job (cluster node, spawned `run:` job): never the lock owner."""
    return any(arg.startswith(("--target-jobs", "--mode")) for arg in argv)


def clear_stale_locks(workdir: str | Path = ".") -> bool:
    """Register this Snakemake process; remove the locks when no registered process is alive.

    Returns:
        True when stale locks were removed.
    """
    if _is_job_process(sys.argv):
        return False
    workdir = Path(workdir)
    holders, locks = workdir / HOLDERS_DIR, workdir / LOCKS_DIR
    holders.mkdir(parents=True, exist_ok=True)
    live = False
    for holder in holders.iterdir():
        if holder.name == str(os.getpid()):
            continue
        if _alive(holder):
            live = True
        else:
            holder.unlink(missing_ok=True)
    (holders / str(os.getpid())).write_text(f"{socket.gethostname()} {_start_time(os.getpid())!r}")
    if live or not locks.exists():
        return False
    shutil.rmtree(locks, ignore_errors=True)
    print(f"leukoflow: removed stale locks {locks}: the Snakemake run that held them is gone", file=sys.stderr)
    return True


def snakemake_ancestor() -> psutil.Process | None:
    """The nearest ancestor process that is Snakemake itself (not the shell that runs the script,
    whose command line merely mentions .snakemake/scripts); None when run outside Snakemake."""
    try:
        for parent in psutil.Process().parents():
            if _is_snakemake(parent.cmdline()):
                return parent
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def _is_snakemake(cmdline: list[str]) -> bool:
    programs = [Path(part).name for part in cmdline[:2]]
    return "snakemake" in programs or cmdline[1:3] == ["-m", "snakemake"]


_watching = threading.Event()


def die_with_snakemake(*, orphan_exits: bool = False) -> None:
    """End this process (and its workers) within WATCH_SECONDS once its Snakemake is gone.

    Args:
        orphan_exits: exit at once when no Snakemake ancestor is left (a rule script whose
            Snakemake was killed while the script was still starting).
    """
    if _watching.is_set():
        return
    _set_parent_death_signal()
    snakemake = snakemake_ancestor()
    if snakemake is None:
        if orphan_exits:
            print("leukoflow: this rule script's Snakemake is gone; exiting before writing anything",
                  file=sys.stderr, flush=True)
            os._exit(1)
        return
    _watching.set()
    thread = threading.Thread(target=_watch, args=(snakemake,), name="die-with-snakemake", daemon=True)
    thread.start()


def guard_rule_script() -> None:
    """In a Snakemake rule script (a `snakemake` job object in __main__), die with that Snakemake
    from the first leukoflow import on: imports take seconds, and a script orphaned meanwhile
    must not go on to write outputs."""
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    if type(job).__module__ == "snakemake.iocontainers" and type(job).__name__ == "Snakemake":
        die_with_snakemake(orphan_exits=True)


def _set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when its parent dies (the shell, for a script job)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher thread alone does it


def _watch(snakemake: psutil.Process) -> None:
    event = threading.Event()
    while snakemake.is_running():
        event.wait(WATCH_SECONDS)
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
