"""Provenance of a run: which code, configuration, data and software made it.

Every MLflow run carries `provenance_tags`; the report's software table and the model bundle
read `git_state` and `installed_versions`; `file_sha256` is the one file digest of the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
SYNTHETIC_GENERATOR = REPO / "workflow" / "leukoflow" / "synthetic"


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 16-hex digest of a whole configuration (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_state(repo: Path = REPO) -> tuple[str, str]:
    """(commit, dirty flag) of the code that runs; 'unknown' outside a git checkout (e.g. a Zenodo zip)."""
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = "true" if _git(repo, "status", "--porcelain") else "false"
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, dirty


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def data_version(config: Mapping[str, Any]) -> str:
    """Which data a run saw: the DVC hash of the dataset, or the synthetic generator's seed+version.

    - synthetic: `synthetic:seed=<seed>:generator=<sha of the synthetic package>:settings=<sha of synthetic:>`
    - folder tracked by DVC (`<images>.dvc` or `<data dir>.dvc`): `dvc:<md5 of the .dir manifest>`
    - folder not tracked: `manifest:<sha of CSV bytes + image names and sizes>`
    """
    data = config.get("data") or {}
    if data.get("source") == "synthetic":
        generator = _folder_digest(SYNTHETIC_GENERATOR)[:12] if SYNTHETIC_GENERATOR.exists() else "unknown"
        return f"synthetic:seed={config.get('seed')}:generator={generator}:settings={config_hash(config.get('synthetic') or {})[:8]}"
    data_dir = Path(data.get("dir", "."))
    images_dir = data_dir / data.get("images_subdir", "images")
    for tracked in (images_dir, data_dir):
        md5 = dvc_hash(tracked)
        if md5:
            return f"dvc:{md5}"
    return f"manifest:{_folder_manifest_digest(data_dir, images_dir, data)}"


def dvc_hash(path: Path) -> str | None:
    """md5 of the single output recorded in `<path>.dvc`, or None when there is no such file."""
    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def _folder_manifest_digest(data_dir: Path, images_dir: Path, data: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in ("train_csv", "test_csv"):
        csv = data_dir / data.get(key, "")
        if csv.is_file():
            digest.update(csv.read_bytes())
    if images_dir.is_dir():
        for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
            digest.update(f"{entry.name}:{entry.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """One digest over a package's Python sources, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def provenance_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """Tags every run carries: code, configuration and data versions, and where it ran."""
    commit, dirty = git_state()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash(config),
        "data_version": data_version(config),
        "snakemake_version": package_version("snakemake"),
        "leukoflow_version": package_version("leukoflow"),
        "host": socket.gethostname(),
        "mlflow.source.git.commit": commit,
    }
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def installed_versions(names: Sequence[str], missing: str = "not installed") -> dict[str, str]:
    """Installed version of each distribution (importlib.metadata); `missing` where it is absent."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = missing
    return versions


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "leukoflow":
            from leukoflow import __version__

            return __version__
        return "unknown"
