"""A real one-node SLURM cluster owned by a test: munged, slurmctld and slurmd as child processes.

Debian's SLURM 22.05 packages (slurmctld, slurmd, slurm-client, munge) are installed with apt when
missing. Every daemon runs in the foreground from files under one scratch folder (its own munge key
and socket, its own slurm.conf via SLURM_CONF, free TCP ports), so nothing of the machine's is
touched and the daemons are stopped by PID when the context ends, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
PARTITION = "leukoflow"
START_TIMEOUT_S = 60


class SlurmUnavailable(RuntimeError):
    """The SLURM packages are absent and could not be installed here."""


def missing_binaries() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in BINARIES if shutil.which(name, path=search) is None]


def ensure_installed() -> None:
    """apt-get install the packages unless every binary is already there (then this costs nothing)."""
    if not missing_binaries():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({missing_binaries()}) and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr[-800:]}")
    if missing_binaries():
        raise SlurmUnavailable(f"SLURM binaries still missing after apt-get: {missing_binaries()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_memory_mb(fraction: float = 0.8) -> int:
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 * fraction)


def slurm_conf(root: Path, munge_socket: Path, cpus: int, memory_mb: int) -> str:
    return "\n".join([
        "ClusterName=leukoflow-test",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        # trust the CPU count below even where it exceeds the machine's (jobs mostly wait on polls)
        "SlurmdParameters=config_overrides",
        # the snakemake plugin polls squeue: finished jobs must stay visible (>= 3x its first check)
        "MinJobAge=600",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    pids: dict[str, int]

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout

    def log(self, daemon: str) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_until(predicate, what: str, processes: dict[str, subprocess.Popen], cluster_root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}; "
                                   f"logs in {cluster_root / 'log'}")
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {START_TIMEOUT_S} s waiting for {what}; logs in {cluster_root / 'log'}")


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for process in reversed(list(processes.values())):
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _srun_shim(root: Path, conf: Path) -> Path:
    """A folder whose `srun` re-exports SLURM_CONF before running the real srun.

    The Snakemake jobstep plugin removes every SLURM_* variable (SLURM_CONF too) before its nested
    `srun`; a real node finds /etc/slurm/slurm.conf, this scratch cluster keeps its file in `root`.
    """
    folder = root / "bin"
    folder.mkdir(exist_ok=True)
    real_srun = shutil.which("srun")
    shim = folder / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{real_srun}" "$@"\n')
    shim.chmod(0o755)
    return folder


@contextlib.contextmanager
def local_cluster(root: Path, cpus: int | None = None) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under `root`; yield a Cluster; stop exactly those PIDs.

    `cpus` is the node's CPU count as SLURM sees it (default: the machine's).
    """
    ensure_installed()
    root = Path(root).resolve()
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, munge_socket, cpus or os.cpu_count() or 1, node_memory_mb()))
    shims = _srun_shim(root, conf)
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": os.pathsep.join([str(shims), os.environ.get("PATH", ""), "/usr/sbin"])}
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(munge_socket.exists, "the munge socket", processes, root)
        processes["slurmctld"] = subprocess.Popen(["slurmctld", "-D", "-i"], env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes["slurmd"] = subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def node_is_idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return state.returncode == 0 and state.stdout.strip() == "idle"

        _wait_until(node_is_idle, "the node to become idle", processes, root)
        yield Cluster(root=root, env=env, pids={name: process.pid for name, process in processes.items()})
    finally:
        _stop(processes)
