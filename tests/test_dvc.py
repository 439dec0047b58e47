"""DVC: dvc.yaml parses, and a tagged release round-trips through a local remote into a clone.

`build_release_repo` makes the release that tests/test_reproduce.py re-runs as well (built once per
session): a temp git repository with this checkout's DVC files (.dvc/config, .dvcignore,
dvc.yaml, .gitignore), a small stand-in workflow in place of the real Snakefile (the real one
trains detectors and classifiers: minutes, not seconds), a DVC-tracked dataset
(`dvc add data/tiny`), one `dvc repro`, a commit tagged v0.1.0 holding results/metrics.json,
and `dvc push` to a local remote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from leukoflow.engine import tracking
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

TAG = "v0.1.0"
DATASET = "data/tiny"
N_FILES = 40
TRACKED_FOLDERS = (DATASET, "results/ingest", "results/curation")
DVC_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "dvc.yaml", "releases.csv")
# .gitignore lines a DVC release needs (docs/releasing.md): metrics.json committed at the tag, the
# reproduce worktrees ignored. Data folders must not be ignored from the root .gitignore: DVC then
# skips every .dvc file below them (and git refuses to add them); `dvc add` writes its own entries.
GITIGNORE_RELEASE_LINES = ("!/results/metrics.json", "/reproductions/")
GITIGNORE_DATA_LINES = ("/data/*", "!/data/.gitkeep")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "leukoflow test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "leukoflow test", "GIT_COMMITTER_EMAIL": "test@example.org"}

# The stand-in workflow: same products and layout as the real one (results/ingest,
# results/curation, results/metrics.json), reading the dataset as an ancient() input.
STAND_IN_SNAKEFILE = """\
import hashlib, json, statistics
from pathlib import Path

configfile: "config/config.yaml"


rule all:
    input: "results/metrics.json", "results/bundle/MANIFEST.sha256", "results/submission.csv"


rule ingest:
    input: images=ancient(config["data"]["dir"] + "/images"), labels=ancient(config["data"]["dir"] + "/labels.csv")
    output: table="results/ingest/images.csv", summary="results/ingest/summary.json"
    run:
        rows = [(p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(Path(input.images).iterdir())]
        Path(output.table).write_text("name,size,sha256\\n" + "".join(f"{n},{s},{h}\\n" for n, s, h in rows))
        Path(output.summary).write_text(json.dumps({"images": len(rows), "bytes": sum(r[1] for r in rows)}))


rule curate:
    input: rules.ingest.output.table
    output: table="results/curation/sizes.csv"
    run:
        sizes = [int(line.split(",")[1]) for line in Path(input[0]).read_text().splitlines()[1:]]
        Path(output.table).write_text("\\n".join(str(s) for s in sorted(sizes)) + "\\n")


rule collect_metrics:
    input: ingest=rules.ingest.output.summary, sizes=rules.curate.output.table
    output: "results/metrics.json"
    run:
        sizes = [int(s) for s in Path(input.sizes).read_text().split()]
        metrics = {"ingest": json.loads(Path(input.ingest).read_text()),
                   "curation": {"mean_size": statistics.mean(sizes), "score": round(statistics.pstdev(sizes) / statistics.mean(sizes), 6)}}
        Path(output[0]).write_text(json.dumps(metrics, indent=2))


rule export_bundle:
    input: rules.curate.output.table
    output: "results/bundle/MANIFEST.sha256"
    run:
        Path(output[0]).write_text(hashlib.sha256(Path(input[0]).read_bytes()).hexdigest() + "  sizes.csv\\n")


rule build_submission:
    input: rules.ingest.output.table
    output: "results/submission.csv"
    run:
        names = [line.split(",")[0] for line in Path(input[0]).read_text().splitlines()[1:]]
        Path(output[0]).write_text("trustii_id,NAME\\n" + "".join(f"{i},{n}\\n" for i, n in enumerate(names)))

"""
_BUILT: dict[Path, "ReleaseRepo"] = {}


@dataclass(frozen=True)
class ReleaseRepo:
    project: Path
    remote: Path
    tag: str
    configfile: str


def tool_env() -> dict[str, str]:
    """The venv's tools first on PATH, no parent run inherited, a fixed git identity."""
    env = {**os.environ, **GIT_IDENTITY, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "DVC_NO_ANALYTICS": "1"}
    env.pop(tracking.ENV_PARENT_RUN, None)
    return env


def sh(*command: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def folder_digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != ".snakemake_timestamp"}


def build_release_repo(base: Path) -> ReleaseRepo:
    """The tagged release (built once per base folder and session)."""
    if base in _BUILT:
        return _BUILT[base]
    project, remote = base / "project", base / "remote"
    _write_project(project)
    sh("git", "init", "-q", "-b", "main", cwd=project)
    sh("dvc", "remote", "modify", "local", "url", str(remote), cwd=project)
    sh("dvc", "add", "-q", DATASET, cwd=project)
    sh("dvc", "repro", "-q", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-q", "-m", f"release {TAG}", cwd=project)
    sh("git", "tag", TAG, cwd=project)
    sh("dvc", "push", "-q", cwd=project)
    _BUILT[base] = ReleaseRepo(project, remote, TAG, "config/release.yaml")
    return _BUILT[base]


def _write_project(project: Path) -> None:
    for relative in DVC_FILES:
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / relative, project / relative)
    (project / ".gitignore").write_text(release_gitignore((REPO / ".gitignore").read_text()))
    # the stand-in project's own release table: this repository's rows name this repository's commits
    releases = (REPO / "releases.csv").read_text().splitlines()[0]
    (project / "releases.csv").write_text(releases + "\n")
    (project / "Snakefile").write_text(STAND_IN_SNAKEFILE)
    for folder in ("rules", "scripts", "leukoflow"):  # dvc.yaml's code dependencies
        (project / "workflow" / folder).mkdir(parents=True)
        (project / "workflow" / folder / "README").write_text("stand-in\n")
    (project / "config").mkdir()
    config = {"data": {"dir": DATASET}, "reproduce": {"abs_tolerance": 1e-9, "rel_tolerance": 1e-6,
                                                     "zenodo_api": "http://127.0.0.1:9/unused"}}
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "config" / "release.yaml").write_text(yaml.safe_dump({"data": {"dir": DATASET}}))
    _point_dvc_yaml_at(project / "dvc.yaml", "config/release.yaml")
    _write_dataset(project / DATASET)


def release_gitignore(text: str) -> str:
    """This checkout's .gitignore as a release needs it (a no-op once the repository has it)."""
    lines = [line for line in text.splitlines() if line.strip() not in GITIGNORE_DATA_LINES]
    lines += [line for line in GITIGNORE_RELEASE_LINES if line not in lines]
    return "\n".join(lines) + "\n"


def _write_dataset(folder: Path, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    for index in range(N_FILES):
        (folder / "images" / f"img_{index:03d}.jpg").write_bytes(rng.bytes(int(rng.integers(500, 5000))))
    (folder / "labels.csv").write_text("NAME,class\n" + "".join(f"img_{i:03d}.jpg,B\n" for i in range(N_FILES)))


def _point_dvc_yaml_at(dvc_yaml: Path, configfile: str) -> None:
    text = dvc_yaml.read_text()
    assert "configfile: config/config.yaml" in text and "cores: all" in text
    dvc_yaml.write_text(text.replace("configfile: config/config.yaml", f"configfile: {configfile}")
                        .replace("cores: all", "cores: 2"))


@pytest.fixture(scope="session")
def release_repo(tmp_path_factory) -> ReleaseRepo:
    return build_release_repo(tmp_path_factory.getbasetemp() / "release")


# ----------------------------------------------------------------------------- tests

def test_dvc_yaml_parses_into_one_workflow_stage():
    listed = sh(sys.executable, "-m", "dvc", "stage", "list", cwd=REPO)
    assert listed.split()[0] == "workflow"
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["workflow"]
    assert stage["cmd"].startswith("snakemake ")
    assert stage["metrics"] == [{"results/metrics.json": {"cache": False, "persist": True}}]
    assert all(next(iter(out.values()))["persist"] for out in stage["outs"]), "Snakemake decides what re-runs"


def test_dvc_config_sets_a_link_cache_and_a_default_local_remote():
    assert sh(sys.executable, "-m", "dvc", "config", "cache.type", cwd=REPO).strip() == "reflink,hardlink,copy"
    assert sh(sys.executable, "-m", "dvc", "config", "core.remote", cwd=REPO).strip() == "local"


def test_gitignore_keeps_dataset_dvc_files_and_metrics_visible(tmp_path):
    """The repository's own .gitignore: `dvc add data/cytologia` must leave a .dvc file that git can
    commit and DVC can see, and results/metrics.json must be committable at a release tag."""
    shutil.copyfile(REPO / ".gitignore", tmp_path / ".gitignore")
    sh("git", "init", "-q", cwd=tmp_path)
    probes = ["data/", "data/cytologia.dvc", "data/cytologia/images_cytologia.dvc", "results/metrics.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=tmp_path, capture_output=True,
                             text=True).stdout.split()
    assert ignored == [], f"{ignored} are git-ignored: apply {GITIGNORE_RELEASE_LINES}, drop {GITIGNORE_DATA_LINES}"


def test_push_then_pull_into_a_clone_restores_identical_files(release_repo, tmp_path):
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(release_repo.project), str(clone), cwd=tmp_path)
    assert not (clone / DATASET).exists() and not (clone / "results" / "ingest").exists()
    sh("dvc", "pull", "-q", cwd=clone)
    for folder in TRACKED_FOLDERS:
        original, restored = folder_digests(release_repo.project / folder), folder_digests(clone / folder)
        assert original and restored == original, f"{folder} differs after dvc pull"
    metrics = "results/metrics.json"
    assert (clone / metrics).read_bytes() == (release_repo.project / metrics).read_bytes(), "metrics.json is in git"
    assert "up to date" in sh("dvc", "status", cwd=clone)
    assert "ingest.images" in sh("dvc", "metrics", "show", cwd=clone)
