"""Report items of the whole run: the final scores, the software versions, the runtime of every job.

Rule entries (paths in, summary out): `tabulate_scores`, `tabulate_software`, `tabulate_runtimes`.
The runtime table reads the `benchmark:` file of every benchmarked job; which files those are is
derived from the workflow's rules (`leukoflow.engine.benchmarks`).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoflow.engine.provenance import git_state, installed_versions
from leukoflow.engine.summaries import flatten, read_json
from leukoflow.report.headline import HEADLINE_KEYS
from leukoflow.report.pages import write_html

UNKNOWN = "unknown"
STAGE_ORDER = tuple(HEADLINE_KEYS)  # stages of results/metrics.json in workflow order
BENCHMARK_ROOT = "benchmarks"  # the rules' `benchmark:` files: benchmarks/<rule>[/<wildcards>].tsv
# Columns of a Snakemake `benchmark:` TSV kept in the runtime table (the file has more).
BENCHMARK_COLUMNS = {"s": "seconds", "max_rss": "max_rss_mb", "cpu_time": "cpu_seconds", "mean_load": "mean_load"}


# ----------------------------------------------------------------------------- scores

def final_scores(metrics: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The official score (when test truth exists) and every stage's headline figure from metrics.json."""
    top = [(key, metrics[key]) for key in ("score", "mean_rescaled_giou", "macro_f1") if key in metrics]
    headline = pd.DataFrame({"figure": [k for k, _ in top], "value": [float(v) for _, v in top]})
    stages = sorted((stage for stage, figures in metrics.items() if isinstance(figures, Mapping)),
                    key=lambda stage: (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage))
    rows = [(stage, key, value) for stage in stages for key, value in flatten(metrics[stage]).items()]
    stages = pd.DataFrame({"stage": [r[0] for r in rows], "figure": [r[1] for r in rows],
                           "value": [_scalar(r[2]) for r in rows]})
    return {"official score of the submission": headline, "headline figures per stage": stages}


def _scalar(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return float(value)


# ----------------------------------------------------------------------------- software and runtimes

def package_versions(names: Sequence[str]) -> pd.DataFrame:
    """Installed version of each distribution, 'not installed' when absent."""
    versions = installed_versions(names)
    return pd.DataFrame({"package": list(versions), "version": list(versions.values())})


def git_commit(directory: str | Path = ".") -> str:
    """HEAD of the checkout holding `directory` (+ '-dirty' with local changes, as the MLflow tags), else unknown."""
    commit, dirty = git_state(Path(directory))
    return f"{commit}-dirty" if dirty == "true" else commit


def torch_build() -> dict[str, str]:
    """torch version, the CUDA it was built with and the visible GPU (each 'unknown' without torch)."""
    try:
        import torch
    except ImportError:
        return {"torch": UNKNOWN, "torch CUDA build": UNKNOWN, "CUDA device": UNKNOWN}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    return {"torch": torch.__version__, "torch CUDA build": torch.version.cuda or "none (CPU build)",
            "CUDA device": device}


def software_tables(packages: Sequence[str], *, repository: str | Path) -> dict[str, pd.DataFrame]:
    environment = {"python": platform.python_version(), "platform": platform.platform(),
                   **torch_build(), "git commit": git_commit(repository)}
    return {"environment": pd.DataFrame({"component": list(environment), "version": list(environment.values())}),
            "python packages": package_versions(packages)}


def read_benchmark(path: str | Path, root: str | Path = BENCHMARK_ROOT) -> pd.DataFrame:
    """One Snakemake benchmark TSV as rows rule, job, seconds, max_rss_mb, cpu_seconds, mean_load.

    The rule is the first folder below `root` (or the file stem), the job the rest of the path.
    """
    relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(Path(path).name)
    rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    job = str(relative.with_suffix("").relative_to(rule)) if len(relative.parts) > 1 else ""
    frame = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
    out = pd.DataFrame({"rule": rule, "job": job, "repeat": np.arange(len(frame))})
    for column, name in BENCHMARK_COLUMNS.items():
        out[name] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    return out


def runtime_tables(paths: Sequence[str | Path], root: str | Path = BENCHMARK_ROOT) -> dict[str, pd.DataFrame]:
    """Seconds per rule (jobs, total, longest job, peak memory) and per job, from benchmark TSVs."""
    jobs = (pd.concat([read_benchmark(p, root) for p in paths], ignore_index=True) if paths else
            pd.DataFrame(columns=["rule", "job", "repeat", *BENCHMARK_COLUMNS.values()]))
    jobs = jobs.astype({name: float for name in BENCHMARK_COLUMNS.values()})
    per_rule = jobs.groupby("rule", sort=False).agg(
        jobs=("seconds", "size"), total_seconds=("seconds", "sum"), longest_job_seconds=("seconds", "max"),
        peak_rss_mb=("max_rss_mb", "max")).reset_index()
    per_rule = per_rule.sort_values("total_seconds", ascending=False, kind="stable").reset_index(drop=True)
    total = pd.DataFrame({"rule": ["all benchmarked jobs"], "jobs": [len(jobs)],
                          "total_seconds": [jobs["seconds"].sum()], "longest_job_seconds": [jobs["seconds"].max()],
                          "peak_rss_mb": [jobs["max_rss_mb"].max()]})
    per_job = jobs.drop(columns="repeat").sort_values(["rule", "job"], kind="stable").reset_index(drop=True)
    return {"per rule": pd.concat([per_rule, total], ignore_index=True), "per job": per_job}


# ----------------------------------------------------------------------------- rule entries

def tabulate_scores(*, metrics: str, table: str) -> dict[str, Any]:
    """Rule entry: the final scores (results/metrics.json) as an HTML page."""
    write_html(final_scores(read_json(metrics)), table, "Final scores")
    return {}


def tabulate_software(*, run_metrics: str, lock: str, table: str, packages: Sequence[str]) -> dict[str, Any]:
    """Rule entry: software versions as an HTML page; the commit is that of the checkout holding `lock`.

    `run_metrics` is not read: it orders the job after the run, so the table describes the code
    that made the results.
    """
    del run_metrics
    write_html(software_tables(packages, repository=Path(lock).parent), table, "Software versions")
    return {}


def tabulate_runtimes(*, benchmarks: Sequence[str], table: str) -> dict[str, Any]:
    """Rule entry: runtime per rule and per job from every benchmark TSV as an HTML page."""
    write_html(runtime_tables(benchmarks), table, "Runtime per rule (benchmark files)")
    return {"benchmarked_jobs": len(benchmarks)}
