"""`leukoflow reproduce`: DOI -> tag through a Zenodo-like HTTP server, worktree, dvc pull, re-run, report."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from argparse import Namespace
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from leukoflow import cli

from leukoflow.engine import reproduce
from tests.conftest import REPO
from tests.test_dvc import ReleaseRepo, build_release_repo, tool_env

RECORD_ID = "4242"
TAG_ONLY_IN_VERSION_ID = "4243"
NO_TAG_ID = "4244"


def _records(tag: str) -> dict[str, dict]:
    """Zenodo records API payloads (the shape of GET /api/records/<id> for a GitHub release)."""
    github = f"https://github.com/example/leukoflow/tree/{tag}"
    return {
        RECORD_ID: {"id": int(RECORD_ID), "doi": f"10.5281/zenodo.{RECORD_ID}",
                    "metadata": {"title": "leukoflow", "version": "not-this-one",
                                 "related_identifiers": [{"identifier": "https://example.org/paper", "relation": "cites"},
                                                         {"identifier": github, "relation": "isSupplementTo", "scheme": "url"}]}},
        TAG_ONLY_IN_VERSION_ID: {"id": int(TAG_ONLY_IN_VERSION_ID), "metadata": {"version": tag}},
        NO_TAG_ID: {"id": int(NO_TAG_ID), "metadata": {"title": "no tag here"}},
    }


@pytest.fixture(scope="module")
def zenodo() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 answering /api/records/<id>; yields (api base URL, paths requested)."""
    records, requested = _records("v0.1.0"), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            requested.append(self.path)
            record = records.get(self.path.rstrip("/").rsplit("/", 1)[-1]) if self.path.startswith("/api/records/") else None
            body = json.dumps(record if record else {"status": 404, "message": "not found"}).encode()
            self.send_response(200 if record else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", requested
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def release_repo(tmp_path_factory) -> ReleaseRepo:
    return build_release_repo(tmp_path_factory.getbasetemp() / "release")


def _leukoflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**tool_env(), "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.run([sys.executable, "-m", "leukoflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.e2e
def test_reproduce_a_doi_end_to_end(release_repo, zenodo, tmp_path):
    api, requested = zenodo
    workdir = tmp_path / "repro"
    result = _leukoflow("reproduce", f"10.5281/zenodo.{RECORD_ID}", "--repo", str(release_repo.project),
                        "--zenodo-api", api, "--cores", "2", "--workdir", str(workdir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"/api/records/{RECORD_ID}" in requested
    report = json.loads((workdir / "report.json").read_text())
    assert report["reproduced"] is True
    assert report["release"] == {"tag": "v0.1.0", "doi": f"10.5281/zenodo.{RECORD_ID}", "resolved_by": "zenodo-api"}
    assert report["configfile"] == release_repo.configfile, "the configuration dvc.yaml recorded for the release"
    recorded = json.loads((release_repo.project / "results" / "metrics.json").read_text())
    compared = {c["key"] for c in report["comparisons"]}
    assert compared == {"ingest.images", "ingest.bytes", "curation.mean_size", "curation.score"} == {
        f"{stage}.{key}" for stage, values in recorded.items() for key in values}
    assert all(c["status"] == "ok" for c in report["comparisons"])
    assert (workdir / "report.md").read_text().count("| ok |") == len(compared)
    worktree = workdir / "worktree"
    assert (worktree / "data" / "tiny" / "images").is_dir(), "the dataset came from the DVC remote"
    head = subprocess.run(["git", "-C", str(worktree), "describe", "--tags"], capture_output=True, text=True).stdout
    assert head.strip() == "v0.1.0"
    assert "steps (100%) done" in (workdir / "workflow.log").read_text(), "--forceall re-ran every job"


@pytest.mark.slow
def test_a_tag_that_does_not_exist_exits_2(release_repo, tmp_path):
    result = _leukoflow("reproduce", "v9.9.9", "--repo", str(release_repo.project), "--workdir", str(tmp_path / "w"),
                        cwd=tmp_path)
    assert result.returncode == reproduce.EXIT_NOT_REPRODUCED
    assert "v9.9.9" in result.stderr and "not in" in result.stderr


def test_zenodo_records_resolve_through_related_identifiers_then_version(zenodo):
    api, _ = zenodo
    assert reproduce.zenodo_tag(RECORD_ID, api=api) == "v0.1.0"
    assert reproduce.zenodo_tag(TAG_ONLY_IN_VERSION_ID, api=api) == "v0.1.0"
    with pytest.raises(reproduce.ReproduceError, match="names no GitHub tag"):
        reproduce.zenodo_tag(NO_TAG_ID, api=api)
    with pytest.raises(reproduce.ReproduceError, match="cannot read Zenodo record"):
        reproduce.zenodo_tag("999", api=api)


@pytest.mark.parametrize("reference", ["10.5281/zenodo.123", "https://doi.org/10.5281/zenodo.123",
                                       "doi:10.5281/zenodo.123", "10.5072/zenodo.123"])
def test_doi_forms_are_recognised(reference):
    match = reproduce.DOI_PATTERN.match(reference)
    assert match and match.group(2) == "123"


def test_tags_are_not_mistaken_for_dois():
    assert not reproduce.DOI_PATTERN.match("v0.1.0")


def test_releases_csv_maps_dois_to_tags(tmp_path):
    table = tmp_path / "releases.csv"
    table.write_text("tag,doi,date,config,notes\nv0.1.0,10.5281/ZENODO.7,2026-11-30,config/config.yaml,first\n")
    assert reproduce._releases_table(table) == {"10.5281/zenodo.7": "v0.1.0"}
    assert reproduce._releases_table(REPO / "releases.csv") is not None  # the repository's own table parses


def test_metrics_are_compared_with_absolute_and_relative_tolerance():
    recorded = {"a": {"score": 0.80, "count": 10}, "label": "x", "gone": 1.0}
    rerun = {"a": {"score": 0.8049, "count": 10}, "label": "x", "extra": 3}
    result = {c.key: c.status for c in reproduce.compare_metrics(recorded, rerun, abs_tolerance=0.0, rel_tolerance=0.01)}
    assert result == {"a.count": "ok", "a.score": "ok", "gone": "missing", "label": "ok", "extra": "new"}
    strict = {c.key: c.status for c in reproduce.compare_metrics(recorded, rerun, abs_tolerance=1e-9, rel_tolerance=0.0)}
    assert strict["a.score"] == "outside tolerance" and strict["a.count"] == "ok"
    nan = reproduce.compare_metrics({"x": float("nan")}, {"x": float("nan")}, abs_tolerance=0, rel_tolerance=0)
    assert nan[0].status == "ok"


def test_exit_status_is_1_when_a_metric_is_outside_tolerance(monkeypatch, capsys):
    release = reproduce.Release("v1", None, "tag")
    report = reproduce.Report("v1", release, "config/config.yaml", 0.0, 0.0, "/w/worktree",
                              [reproduce.Comparison("score", 0.8, 0.7, "outside tolerance", 0.1)])
    monkeypatch.setattr(reproduce, "reproduce", lambda *args, **kwargs: report)
    args = cli.build_parser().parse_args(["reproduce", "v1"])
    assert args.run(args) == reproduce.EXIT_OUTSIDE_TOLERANCE
    assert "score: recorded 0.8, re-run 0.7" in capsys.readouterr().out
    report.comparisons[0].status = "ok"
    assert args.run(Namespace(**vars(args))) == reproduce.EXIT_REPRODUCED


def test_help_documents_tag_and_doi_forms():
    result = subprocess.run([sys.executable, "-m", "leukoflow.cli", "reproduce", "--help"], capture_output=True, text=True,
                            env={**tool_env(), "PYTHONPATH": str(REPO / "workflow")})
    assert result.returncode == 0
    assert "leukoflow reproduce v0.2.0" in result.stdout and "10.5281/zenodo." in result.stdout
