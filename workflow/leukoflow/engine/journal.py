"""Journaled MLflow runs: the run of a tracked job that does not train, kept as a record file.

The job writes its run (start and end times, params, provenance tags, metrics, copies of its small
outputs and logs, its bundle's path, its status) under `JOURNAL_DIR` without importing MLflow,
whose import and SQLite store cost about 2 s of CPU per job (BENCHMARKS.md, "Light jobs"). The
invocation's main process, which has MLflow loaded since `onstart`, logs every record when the
invocation ends (`flush`, from the `onsuccess`/`onerror` hooks of workflow/rules/tracking.smk);
records a killed invocation left are logged by the next `onstart`, a job that never ended as KILLED. Training jobs keep live runs
(`tracking.start_rule_run`): their per-epoch curves show while they train.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leukoflow.engine.provenance import provenance_tags
from leukoflow.engine.summaries import end_of_job_values, metric_values
from leukoflow.engine.tracking import (
    BUNDLE_OUTPUT, MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, RuleRun, TrackingSettings, _chunks, _named_output,
    _param_value, _read_run_file, _small_files, _truncate_tags, log_bundle, open_store, parent_run_id, rule_params,
    rule_tags,
    run_name, settings_from_config, with_lock_retries,
)

JOURNAL_DIR = Path("results/tracking/journal")  # runs of jobs that do not train, until the main process logs them
logger = logging.getLogger("leukoflow.engine.tracking")


class JournaledRun:
    """The run of a job that does not train, as a record file (`JOURNAL_DIR`); same interface as
    `tracking.RuleRun`. The run appears in the store when the invocation ends, not while the job runs."""

    def __init__(self, settings: TrackingSettings, path: Path, record: dict[str, Any]) -> None:
        self.settings, self.path, self.record = settings, path, record
        self.live_keys: set[str] = set()

    @property
    def active(self) -> bool:
        return True

    def finish(self, summary: Mapping[str, Any], smk: Any) -> None:
        try:
            self.record["metrics"] += [[key, value, step, _now_ms()]
                                       for key, value, step in end_of_job_values(summary, self.live_keys)]
            self.record["artifacts"] = self._keep_small_files(smk)
            bundle = _named_output(smk, BUNDLE_OUTPUT)
            self.record["bundle"] = [str(Path(bundle).resolve()), smk.rule] if bundle is not None else None
            self._end("FINISHED")
        except Exception:
            logger.warning("tracking: could not record run %s; the rule's outputs are unaffected", self.path,
                           exc_info=True)

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        values = [[key, value, step, _now_ms()] for key, value, _ in metric_values(metrics)]
        self.record["metrics"] += values
        self.live_keys.update(key for key, *_ in values)

    def fail(self) -> None:
        with contextlib.suppress(Exception):
            self._end("FAILED")

    def _end(self, status: str) -> None:
        self.record.update(status=status, end_ms=_now_ms())
        _write_record(self.path, self.record)

    def _keep_small_files(self, smk: Any) -> list[list[str]]:
        """Copies of the small outputs and logs as they are now (a later job may rewrite a log)."""
        kept = []
        for path, folder in _small_files(smk, self.settings.max_artifact_mb):
            copy = self.path.with_suffix("") / folder / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            kept.append([str(copy.resolve()), folder])
        return kept


def start_journaled_run(smk: Any) -> JournaledRun | RuleRun:
    """Begin the record of a tracked job that does not train (no-op when tracking is off)."""
    settings = settings_from_config(getattr(smk, "config", {}) or {})
    if settings is None:
        return RuleRun()
    tags = {**provenance_tags(smk.config), **rule_tags(smk)}
    parent = parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    record = {"run_name": run_name(smk), "tags": _truncate_tags(tags), "start_ms": _now_ms(), "status": "RUNNING",
              "params": {key: _param_value(value) for key, value in rule_params(smk).items()}, "metrics": []}
    path = JOURNAL_DIR / f"{time.time_ns()}-{socket.gethostname()}-{os.getpid()}.json"
    _write_record(path, record)  # a job killed before its end still leaves its run (logged KILLED)
    return JournaledRun(settings, path, record)


def flush(config: Mapping[str, Any], workdir: str | Path | None = None) -> int:
    """Snakemake hooks: log the journaled runs of this working directory (none when tracking is off)."""
    settings = settings_from_config(config, workdir)
    if settings is None or not any((Path(workdir or ".") / JOURNAL_DIR).glob("*.json")):
        return 0
    client, experiment_id = open_store(settings)
    return flush_journal(client, settings, experiment_id, workdir)


def flush_journal(client: Any, settings: TrackingSettings, experiment_id: str,
                  workdir: str | Path | None = None) -> int:
    """Log every journaled run to the store, oldest first, and remove its record; how many.

    A record that cannot be logged stays for the next invocation's `on_start`.
    """
    folder = Path(workdir or ".") / JOURNAL_DIR
    logged = 0
    for path in sorted(folder.glob("*.json")):
        record = _read_run_file(path)
        if record is None:
            continue
        try:
            _log_record(client, settings, experiment_id, record)
        except Exception:
            logger.warning("tracking: could not log the journaled run %s; kept for the next run", path, exc_info=True)
            continue
        path.unlink()
        shutil.rmtree(path.with_suffix(""), ignore_errors=True)
        logged += 1
    return logged


def _log_record(client: Any, settings: TrackingSettings, experiment_id: str, record: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param

    run = with_lock_retries(lambda: client.create_run(experiment_id, start_time=record["start_ms"], tags=record["tags"],
                                                      run_name=record["run_name"]), settings, "create run")
    run_id = run.info.run_id
    params = [Param(key, value) for key, value in record["params"].items()]
    for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
        with_lock_retries(lambda c=chunk: client.log_batch(run_id, params=c), settings, "log params")
    metrics = [Metric(key, value, timestamp, step) for key, value, step, timestamp in record["metrics"]]
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        with_lock_retries(lambda c=chunk: client.log_batch(run_id, metrics=c), settings, "log metrics")
    for path, folder in record.get("artifacts") or ():
        with_lock_retries(lambda p=path, f=folder: client.log_artifact(run_id, p, f), settings, f"log artifact {path}")
    if record.get("bundle") and Path(record["bundle"][0]).exists():
        log_bundle(client, settings, experiment_id, run_id, Path(record["bundle"][0]), name=record["bundle"][1])
    status = "KILLED" if record["status"] == "RUNNING" else record["status"]
    with_lock_retries(lambda: client.set_terminated(run_id, status, end_time=record.get("end_ms")), settings, "end run")


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, default=str) + "\n")
    os.replace(partial, path)


def _now_ms() -> int:
    return int(time.time() * 1000)
