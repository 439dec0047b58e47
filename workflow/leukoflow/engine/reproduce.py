"""`leukoflow reproduce <tag|DOI>`: re-run a release and compare its metrics with the recorded ones.

Steps (docs/releasing.md): resolve a DOI to its git tag (releases.csv, else the Zenodo records
API, whose `related_identifiers` point at the GitHub tag), check the tag out into a fresh
`git worktree`, `dvc pull` its data and recorded outputs, keep the recorded
`results/metrics.json`, re-run the whole workflow (`--forceall`) with the tag's configuration,
and write `report.json` + `report.md` comparing every recorded metric with the re-run one.

Exit status: 0 every metric within tolerance, 1 a metric outside tolerance or missing,
2 the release could not be re-run (unknown tag/DOI, failed pull or workflow run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leukoflow.engine.config import load_config
from leukoflow.engine.summaries import flatten
from leukoflow.engine.tracking import ENV_PARENT_RUN

EXIT_REPRODUCED = 0
EXIT_OUTSIDE_TOLERANCE = 1
EXIT_NOT_REPRODUCED = 2
DEFAULT_ZENODO_API = "https://zenodo.org/api"
# Fallbacks for releases made before config had a `reproduce:` section.
DEFAULT_ABS_TOLERANCE = 1e-9
DEFAULT_REL_TOLERANCE = 1e-6
DEFAULT_HTTP_TIMEOUT_S = 30.0
METRICS_JSON = "results/metrics.json"
RELEASES_CSV = "releases.csv"
DEFAULT_CONFIG = "config/config.yaml"
DOI_PATTERN = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)?(10\.\d{4,9}/zenodo\.(\d+))$", re.IGNORECASE)
# Zenodo's GitHub integration records the release as https://github.com/<owner>/<repo>/tree/<tag>.
TAG_URL_PATTERN = re.compile(r"github\.com/[^/]+/[^/]+/(?:tree|releases/tag)/([^/?#]+)")


class ReproduceError(RuntimeError):
    """The release cannot be re-run; the message says which step failed and why."""


@dataclass(frozen=True)
class Release:
    tag: str
    doi: str | None
    resolved_by: str  # "tag", "releases.csv" or "zenodo-api"


@dataclass
class Comparison:
    key: str
    recorded: Any
    reproduced: Any
    status: str  # "ok", "outside tolerance", "missing", "new"
    difference: float | None = None


@dataclass
class Report:
    reference: str
    release: Release
    configfile: str
    abs_tolerance: float
    rel_tolerance: float
    worktree: str
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return all(c.status in ("ok", "new") for c in self.comparisons)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reproduced": self.reproduced}


# ----------------------------------------------------------------------------- resolving

def resolve_release(reference: str, *, repo: Path, zenodo_api: str,
                    http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> Release:
    """A tag as given, or the tag of a version or DOI (releases.csv first, then the records API)."""
    row = release_row(repo / RELEASES_CSV, reference)  # issue 18: version/DOI -> commit, tag re-created
    if row is not None:
        doi = DOI_PATTERN.match(row.get("doi", "").strip())  # "pending deposit" until Zenodo mints one
        return Release(ensure_release_tag(repo, row), doi.group(1).lower() if doi else None, RELEASES_CSV)
    match = DOI_PATTERN.match(reference.strip())
    if not match:
        _require_tag(repo, reference)
        return Release(reference, None, "tag")
    doi, record_id = match.group(1).lower(), match.group(2)
    tag = _releases_table(repo / RELEASES_CSV).get(doi)
    if tag:
        _require_tag(repo, tag)
        return Release(tag, doi, RELEASES_CSV)
    tag = zenodo_tag(record_id, api=zenodo_api, http_timeout_s=http_timeout_s)
    _require_tag(repo, tag)
    return Release(tag, doi, "zenodo-api")


def _releases_table(path: Path) -> dict[str, str]:
    """DOI -> tag from releases.csv (version DOIs; concept DOIs name no single tag)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["doi"].strip().lower(): row["tag"].strip() for row in csv.DictReader(handle) if row.get("doi")}


# --- releases.csv rows (issue 18): tag, version, commit, doi, date, config, notes -------------------
# Tags do not travel with every clone; the row's commit does, so a missing tag is re-created there.

def release_row(path: Path, reference: str) -> dict[str, str] | None:
    """The releases.csv row whose tag, version (with or without a leading 'v') or DOI is `reference`."""
    if not path.is_file():
        return None
    wanted = reference.strip().lower().removeprefix("https://doi.org/")
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            keys = {row.get("tag", ""), row.get("version", ""), "v" + row.get("version", ""), row.get("doi", "")}
            if wanted in {key.strip().lower() for key in keys if key and key.strip() and key.strip() != "v"}:
                return {key: (value or "") for key, value in row.items()}
    return None


def ensure_release_tag(repo: Path, row: dict[str, str]) -> str:
    """The row's tag, created at the row's commit when the clone lacks it; refused when it points elsewhere."""
    tag, commit = row.get("tag", "").strip(), row.get("commit", "").strip()
    found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"],
                           capture_output=True, text=True)
    if not commit:
        _require_tag(repo, tag)
        return tag
    exists = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if exists.returncode != 0:
        raise ReproduceError(f"releases.csv: commit {commit} of {tag} is not in {repo} (fetch it first)")
    if found.returncode == 0:
        if not found.stdout.strip().startswith(commit) and not commit.startswith(found.stdout.strip()):
            raise ReproduceError(f"tag {tag} points at {found.stdout.strip()}, but releases.csv records {commit}")
        return tag
    _run(["git", "-C", str(repo), "tag", tag, commit], f"git tag {tag}")  # lightweight: needs no git identity
    return tag

# --- end of releases.csv rows -----------------------------------------------------------------------


def zenodo_tag(record_id: str, *, api: str, http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> str:
    """The git tag a Zenodo record was made from: its GitHub `related_identifiers`, else `version`."""
    url = f"{api.rstrip('/')}/records/{record_id}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=http_timeout_s) as response:
            record = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ReproduceError(f"cannot read Zenodo record {url}: {error}") from error
    metadata = record.get("metadata") or {}
    for related in metadata.get("related_identifiers") or []:
        found = TAG_URL_PATTERN.search(str(related.get("identifier", "")))
        if found:
            return found.group(1)
    if metadata.get("version"):
        return str(metadata["version"])
    raise ReproduceError(f"Zenodo record {url} names no GitHub tag (no related_identifiers .../tree/<tag>, no version)")


def _require_tag(repo: Path, tag: str) -> None:
    probe = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ReproduceError(f"tag {tag!r} is not in {repo} (run `git fetch --tags` first?)")


# ----------------------------------------------------------------------------- re-running

def prepare_worktree(repo: Path, tag: str, path: Path, *, force: bool = False) -> Path:
    """A fresh detached `git worktree` of the tag, with the user's DVC config.local (remotes)."""
    if path.exists():
        if not force:
            raise ReproduceError(f"{path} exists; remove it or pass --force")
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["git", "-C", str(repo), "worktree", "add", "--detach", str(path), tag], "git worktree add")
    local_config = repo / ".dvc" / "config.local"
    if local_config.is_file() and (path / ".dvc").is_dir():
        shutil.copyfile(local_config, path / ".dvc" / "config.local")
    return path


def dvc_pull(worktree: Path, *, remote: str | None = None) -> None:
    """Fetch the tag's data and recorded outputs; `remote` is a remote name or a path/URL."""
    command = [sys.executable, "-m", "dvc", "pull"]
    if remote and _looks_like_location(remote):
        _run([sys.executable, "-m", "dvc", "remote", "add", "--local", "--force", "--default", "reproduce", remote],
             "dvc remote add", cwd=worktree)
    elif remote:
        command += ["--remote", remote]
    _run(command, "dvc pull", cwd=worktree)


def _looks_like_location(remote: str) -> bool:
    return "://" in remote or "/" in remote or os.sep in remote or Path(remote).exists()


def release_configfile(worktree: Path, tag: str) -> str:
    """The configuration the release was made with: its releases.csv row, else dvc.yaml's vars."""
    table = worktree / RELEASES_CSV
    if table.is_file():
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("tag", "").strip() == tag and row.get("config", "").strip():
                    return row["config"].strip()
    dvc_yaml = worktree / "dvc.yaml"
    if dvc_yaml.is_file():
        for entry in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("vars") or []:
            if isinstance(entry, dict) and entry.get("configfile"):
                return str(entry["configfile"])
    return DEFAULT_CONFIG


def effective_config(worktree: Path, configfile: str) -> dict[str, Any]:
    """The release's config/config.yaml updated by `configfile`, merged as Snakemake merges --configfile."""
    for path in (worktree / DEFAULT_CONFIG, worktree / configfile):
        if not path.is_file():
            raise ReproduceError(f"configuration {path} is not in the release")
    return load_config(worktree / configfile, defaults=worktree / DEFAULT_CONFIG)


def run_workflow(worktree: Path, *, configfile: str, cores: str, log_path: Path, extra_args: list[str] | None = None) -> None:
    """Every job of the release's workflow again (`--forceall`: pulled outputs are not trusted)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(worktree / "Snakefile"), "--directory", str(worktree),
               "--cores", cores, "--configfile", configfile, "--forceall", *(extra_args or [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(worktree / "workflow"), os.environ.get("PYTHONPATH")]))}
    env.pop(ENV_PARENT_RUN, None)  # the release run gets its own parent run, in its own store
    with log_path.open("w") as log:
        result = subprocess.run(command, cwd=worktree, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise ReproduceError(f"the workflow failed (exit {result.returncode}); see {log_path}")


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReproduceError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")


# ----------------------------------------------------------------------------- comparing

def compare_metrics(recorded: dict[str, Any], reproduced: dict[str, Any], *, abs_tolerance: float,
                    rel_tolerance: float) -> list[Comparison]:
    """Every recorded metric against the re-run: numbers within max(abs, rel * |recorded|),
    anything else equal. Metrics only the re-run has are listed as 'new' (not a failure)."""
    old, new = flatten(recorded), flatten(reproduced)
    comparisons = [_compare(key, old[key], new.get(key, _MISSING), abs_tolerance, rel_tolerance) for key in sorted(old)]
    comparisons += [Comparison(key, None, new[key], "new") for key in sorted(set(new) - set(old))]
    return comparisons


_MISSING = object()


def _compare(key: str, recorded: Any, reproduced: Any, abs_tolerance: float, rel_tolerance: float) -> Comparison:
    if reproduced is _MISSING:
        return Comparison(key, recorded, None, "missing")
    if _is_number(recorded) and _is_number(reproduced):
        if math.isnan(recorded) or math.isnan(reproduced):
            same = math.isnan(recorded) and math.isnan(reproduced)
            return Comparison(key, recorded, reproduced, "ok" if same else "outside tolerance")
        difference = abs(float(reproduced) - float(recorded))
        allowed = max(abs_tolerance, rel_tolerance * abs(float(recorded)))
        return Comparison(key, recorded, reproduced, "ok" if difference <= allowed else "outside tolerance", difference)
    return Comparison(key, recorded, reproduced, "ok" if recorded == reproduced else "outside tolerance")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_report(report: Report, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = directory / "report.json", directory / "report.md"
    json_path.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    markdown_path.write_text(_markdown(report))
    return json_path, markdown_path


def _markdown(report: Report) -> str:
    release = report.release
    verdict = "reproduced" if report.reproduced else "NOT reproduced"
    lines = [
        f"# Reproduction of {release.tag}" + (f" ({release.doi})" if release.doi else ""),
        "",
        f"Verdict: **{verdict}** (tolerance: max({report.abs_tolerance:g}, {report.rel_tolerance:g} x |recorded|)).",
        f"Tag resolved by: {release.resolved_by}; configuration: `{report.configfile}`; worktree: `{report.worktree}`.",
        "",
        "| metric | recorded | re-run | difference | status |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{c.key}` | {c.recorded} | {c.reproduced} | {'' if c.difference is None else f'{c.difference:.3g}'} | {c.status} |"
              for c in report.comparisons]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry point

def reproduce(reference: str, *, repo: str | Path = ".", workdir: str | Path | None = None, remote: str | None = None,
              configfile: str | None = None, cores: str = "all", zenodo_api: str | None = None,
              abs_tolerance: float | None = None, rel_tolerance: float | None = None,
              http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S, force: bool = False,
              snakemake_args: list[str] | None = None) -> Report:
    """Re-run the release `reference` (tag or DOI) and compare its metrics; the written report.

    Tolerances and the Zenodo API default to the `reproduce:` section of the tag's (resp. this
    checkout's) configuration. Raises ReproduceError when a step fails.
    """
    repo = Path(repo).resolve()
    api = zenodo_api or _config_value(repo / DEFAULT_CONFIG, "zenodo_api", DEFAULT_ZENODO_API)
    release = resolve_release(reference, repo=repo, zenodo_api=api, http_timeout_s=http_timeout_s)
    workdir = Path(workdir or repo / "reproductions" / release.tag).resolve()
    worktree = prepare_worktree(repo, release.tag, workdir / "worktree", force=force)
    dvc_pull(worktree, remote=remote)
    recorded_path = worktree / METRICS_JSON
    if not recorded_path.is_file():
        raise ReproduceError(f"{release.tag} has no recorded {METRICS_JSON} (neither in git nor in the DVC remote)")
    recorded = json.loads(recorded_path.read_text())
    (workdir / "recorded_metrics.json").write_text(json.dumps(recorded, indent=2) + "\n")
    configfile = configfile or release_configfile(worktree, release.tag)
    section = effective_config(worktree, configfile).get("reproduce") or {}
    report = Report(
        reference=reference, release=release, configfile=configfile, worktree=str(worktree),
        abs_tolerance=abs_tolerance if abs_tolerance is not None else float(section.get("abs_tolerance", DEFAULT_ABS_TOLERANCE)),
        rel_tolerance=rel_tolerance if rel_tolerance is not None else float(section.get("rel_tolerance", DEFAULT_REL_TOLERANCE)),
    )
    run_workflow(worktree, configfile=configfile, cores=cores, log_path=workdir / "workflow.log", extra_args=snakemake_args)
    reproduced = json.loads((worktree / METRICS_JSON).read_text())
    report.comparisons = compare_metrics(recorded, reproduced, abs_tolerance=report.abs_tolerance,
                                         rel_tolerance=report.rel_tolerance)
    write_report(report, workdir)
    return report


def _config_value(path: Path, key: str, default: str) -> str:
    if not path.is_file():
        return default
    return ((yaml.safe_load(path.read_text()) or {}).get("reproduce") or {}).get(key, default)


HELP = "re-run a release (git tag or Zenodo DOI) and compare its metrics with the recorded ones"
EPILOG = """\
REFERENCE is a git tag of this repository or the DOI of its Zenodo record:
  leukoflow reproduce v0.2.0
  leukoflow reproduce 10.5281/zenodo.1234567          (also https://doi.org/... or doi:...)
  leukoflow reproduce v0.2.0 --remote /mnt/shared/leukoflow-dvc --cores 16

A DOI is looked up in releases.csv, else in the Zenodo records API (<zenodo-api>/records/<id>),
whose related identifiers point at the GitHub tag. The tag is checked out into a fresh git
worktree (<workdir>/worktree), `dvc pull`ed, and its workflow is re-run with the configuration
the release used. <workdir>/report.md and report.json compare every metric of the recorded
results/metrics.json. Exit status: 0 reproduced, 1 a metric outside tolerance, 2 not re-run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("reference", metavar="REFERENCE", help="release tag (v0.2.0) or Zenodo DOI (10.5281/zenodo.N)")
    parser.add_argument("--remote", help="DVC remote name, or a path/URL used as the remote (default: the tag's default remote)")
    parser.add_argument("--repo", default=".", help="the git repository holding the tag (default: current directory)")
    parser.add_argument("--workdir", help="where the worktree, log and report go (default: <repo>/reproductions/<tag>)")
    parser.add_argument("--configfile", help="configuration to run (default: the release's, from releases.csv or dvc.yaml)")
    parser.add_argument("--cores", default="all", help="snakemake --cores (default: all)")
    parser.add_argument("--zenodo-api", help=f"Zenodo REST API base URL (default: config reproduce.zenodo_api, else {DEFAULT_ZENODO_API})")
    parser.add_argument("--abs-tolerance", type=float, help="override config reproduce.abs_tolerance")
    parser.add_argument("--rel-tolerance", type=float, help="override config reproduce.rel_tolerance")
    parser.add_argument("--http-timeout", type=float, default=DEFAULT_HTTP_TIMEOUT_S, help="seconds to wait for Zenodo")
    parser.add_argument("--force", action="store_true", help="replace an existing worktree in --workdir")


def run_command(args: argparse.Namespace) -> int:
    try:
        report = reproduce(args.reference, repo=args.repo, workdir=args.workdir, remote=args.remote,
                           configfile=args.configfile, cores=str(args.cores), zenodo_api=args.zenodo_api,
                           abs_tolerance=args.abs_tolerance, rel_tolerance=args.rel_tolerance,
                           http_timeout_s=args.http_timeout, force=args.force)
    except ReproduceError as error:
        print(f"leukoflow reproduce: error: {error}", file=sys.stderr)
        return EXIT_NOT_REPRODUCED
    failures = [c for c in report.comparisons if c.status not in ("ok", "new")]
    print(f"{report.release.tag}: {len(report.comparisons) - len(failures)} metric(s) match, {len(failures)} do not "
          f"(report: {Path(report.worktree).parent / 'report.md'})")
    for comparison in failures:
        print(f"  {comparison.key}: recorded {comparison.recorded}, re-run {comparison.reproduced} ({comparison.status})")
    return EXIT_REPRODUCED if report.reproduced else EXIT_OUTSIDE_TOLERANCE
