"""Releases resolve through releases.csv: a version or DOI names a commit, and a clone without the
tag gets it back (tags do not travel with every clone)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from leukoflow.engine import reproduce

REPO = Path(__file__).resolve().parents[1]
HEADER = "tag,version,commit,doi,date,config,notes\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def released(tmp_path: Path) -> tuple[Path, str]:
    """An origin repository with a tagged release commit, a later commit recording it, and a clone without tags."""
    origin = tmp_path / "origin"
    origin.mkdir()
    _git(origin, "init", "-q", "-b", "main")
    _git(origin, "config", "user.email", "t@example.org")
    _git(origin, "config", "user.name", "t")
    (origin / "code.txt").write_text("release\n")
    _git(origin, "add", ".")
    _git(origin, "commit", "-qm", "Release v0.1.0")
    _git(origin, "tag", "-a", "v0.1.0", "-m", "v0.1.0")
    commit = _git(origin, "rev-parse", "HEAD")
    (origin / "releases.csv").write_text(HEADER + f"v0.1.0,0.1.0,{commit},pending deposit,2026-12-06,"
                                                  "config/config.yaml,first release\n")
    _git(origin, "add", ".")
    _git(origin, "commit", "-qm", "releases.csv: v0.1.0")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-tags", str(origin), str(clone)], check=True)
    return clone, commit


@pytest.mark.parametrize("reference", ["0.1.0", "v0.1.0"])
def test_a_version_resolves_to_its_commit_and_the_missing_tag_is_recreated(released, reference):
    clone, commit = released
    assert _git(clone, "tag", "--list") == ""
    release = reproduce.resolve_release(reference, repo=clone, zenodo_api="http://127.0.0.1:9")
    assert release.tag == "v0.1.0" and release.resolved_by == "releases.csv" and release.doi is None
    assert _git(clone, "rev-parse", "v0.1.0^{commit}") == commit
    again = reproduce.resolve_release(reference, repo=clone, zenodo_api="http://127.0.0.1:9")
    assert again.tag == "v0.1.0"  # present now, and at the recorded commit


def test_a_doi_resolves_through_its_row(released):
    clone, commit = released
    table = clone / "releases.csv"
    table.write_text(table.read_text().replace("pending deposit", "10.5281/zenodo.1234567"))
    release = reproduce.resolve_release("10.5281/zenodo.1234567", repo=clone, zenodo_api="http://127.0.0.1:9")
    assert release.tag == "v0.1.0" and release.doi == "10.5281/zenodo.1234567"
    assert _git(clone, "rev-parse", "v0.1.0^{commit}") == commit


def test_a_tag_at_another_commit_is_refused(released):
    clone, commit = released
    _git(clone, "tag", "v0.1.0", "HEAD")  # HEAD is the later commit, not the release
    with pytest.raises(reproduce.ReproduceError, match="releases.csv records"):
        reproduce.resolve_release("0.1.0", repo=clone, zenodo_api="http://127.0.0.1:9")


def test_releases_csv_of_this_repository_has_the_documented_columns():
    header = (REPO / "releases.csv").read_text().splitlines()[0]
    assert header == HEADER.strip()
