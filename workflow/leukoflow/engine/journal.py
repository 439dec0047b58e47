"""Journaled MLflow runs: every tracked job writes its run as a record file; the main process logs it.

A tracked job (`runtime.tracked`) writes its run under `JOURNAL_DIR` (start and end times,
params, provenance tags, per-epoch and end-of-job metrics, copies of its small outputs and logs,
its bundle's path, its status) and never imports MLflow, whose import and SQLite store cost about
2 s of CPU per job (BENCHMARKS.md, "Journaled runs"). The invocation's main Snakemake process,
which loads MLflow once for the parent run, relays the records into the store (`Relay`): a
thread started by `start` (the `onstart` hook) creates each run as its job starts, logs its
epochs as they come and ends it when its record does, every `tracking.relay_s` seconds; `flush`
(the `onsuccess`/`onerror` hooks) stops the thread and logs what is left. Records a killed
invocation left are logged by the next `start`, a job that never ended as KILLED. A record that
cannot be logged stays for the next invocation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
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

JOURNAL_DIR = Path("results/tracking/journal")  # the jobs' runs, until the main process has logged them
logger = logging.getLogger("leukoflow.engine.tracking")


class JournaledRun:
    """The run of a tracked job as a record file (`JOURNAL_DIR`); same interface as `tracking.RuleRun`."""

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
        """One epoch's numbers at `step`: written at once, so the relay shows them while the job trains."""
        values = [[key, value, step, _now_ms()] for key, value, _ in metric_values(metrics)]
        self.record["metrics"] += values
        self.live_keys.update(key for key, *_ in values)
        with contextlib.suppress(OSError):
            _write_record(self.path, self.record)

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
    """Begin the record of a tracked job (no-op when tracking is off)."""
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


class Relay:
    """Logs the journal of one working directory into the store, record by record and part by part:
    a run is created once, its metric values are logged once each, and it ends with its record."""

    def __init__(self, client: Any, settings: TrackingSettings, experiment_id: str,
                 workdir: str | Path | None = None) -> None:
        self.client, self.settings, self.experiment_id = client, settings, experiment_id
        self.folder = Path(workdir or ".") / JOURNAL_DIR
        self.open: dict[Path, tuple[str, int]] = {}  # record -> (run id, metric values logged)
        self._lock = threading.Lock()

    def sync(self, *, final: bool) -> int:
        """One pass over the records; `final` also ends runs still RUNNING (KILLED). Runs ended."""
        ended = 0
        with self._lock:
            for path in sorted(self.folder.glob("*.json")):
                record = _read_run_file(path)
                if record is None:
                    continue
                try:
                    ended += self._sync_record(path, record, final)
                except Exception:
                    logger.warning("tracking: could not log the journaled run %s; kept for the next pass", path,
                                   exc_info=True)
        return ended

    def _sync_record(self, path: Path, record: dict[str, Any], final: bool) -> int:
        from mlflow.entities import Metric

        run_id, logged = self.open.get(path) or (self._create_run(record), 0)
        self.open[path] = (run_id, logged)
        new = [Metric(key, value, timestamp, step) for key, value, step, timestamp in record["metrics"][logged:]]
        for chunk in _chunks(new, MAX_METRICS_PER_BATCH):
            with_lock_retries(lambda c=chunk: self.client.log_batch(run_id, metrics=c), self.settings, "log metrics")
        self.open[path] = (run_id, logged + len(new))
        if record["status"] == "RUNNING" and not final:
            return 0
        self._end_run(run_id, record)
        path.unlink()
        shutil.rmtree(path.with_suffix(""), ignore_errors=True)
        del self.open[path]
        return 1

    def _create_run(self, record: dict[str, Any]) -> str:
        from mlflow.entities import Param

        run = with_lock_retries(lambda: self.client.create_run(self.experiment_id, start_time=record["start_ms"],
                                                               tags=record["tags"], run_name=record["run_name"]),
                                self.settings, "create run")
        params = [Param(key, value) for key, value in record["params"].items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            with_lock_retries(lambda c=chunk: self.client.log_batch(run.info.run_id, params=c), self.settings,
                              "log params")
        return run.info.run_id

    def _end_run(self, run_id: str, record: dict[str, Any]) -> None:
        for path, folder in record.get("artifacts") or ():
            with_lock_retries(lambda p=path, f=folder: self.client.log_artifact(run_id, p, f), self.settings,
                              f"log artifact {path}")
        if record.get("bundle") and Path(record["bundle"][0]).exists():
            log_bundle(self.client, self.settings, self.experiment_id, run_id, Path(record["bundle"][0]),
                       name=record["bundle"][1])
        status = "KILLED" if record["status"] == "RUNNING" else record["status"]
        with_lock_retries(lambda: self.client.set_terminated(run_id, status, end_time=record.get("end_ms")),
                          self.settings, "end run")


# The relay of this process's invocation: (relay, stop event, thread), set by `start`.
_ACTIVE: dict[Path, tuple[Relay, threading.Event, threading.Thread]] = {}


def start(config: Mapping[str, Any], workdir: str | Path | None = None) -> Relay | None:
    """Snakemake `onstart`: log the records a killed invocation left, then relay this one's."""
    settings = settings_from_config(config, workdir)
    if settings is None:
        return None
    client, experiment_id = open_store(settings)
    relay = Relay(client, settings, experiment_id, workdir)
    relay.sync(final=True)  # no job of this invocation has started yet: every record is a leftover
    stop = threading.Event()
    thread = threading.Thread(target=_relay_until, args=(relay, stop), name="leukoflow-journal-relay", daemon=True)
    _ACTIVE[relay.folder.resolve()] = (relay, stop, thread)
    thread.start()
    return relay


def _relay_until(relay: Relay, stop: threading.Event) -> None:
    while not stop.wait(relay.settings.relay_s):
        relay.sync(final=False)


def flush(config: Mapping[str, Any], workdir: str | Path | None = None) -> int:
    """Snakemake `onsuccess`/`onerror`: stop the relay and log every record left; runs ended."""
    settings = settings_from_config(config, workdir)
    if settings is None:
        return 0
    folder = Path(workdir or ".") / JOURNAL_DIR
    active = _ACTIVE.pop(folder.resolve(), None)
    if active is not None:
        relay, stop, thread = active
        stop.set()
        thread.join()
        return relay.sync(final=True)
    if not any(folder.glob("*.json")):
        return 0
    client, experiment_id = open_store(settings)
    return Relay(client, settings, experiment_id, workdir).sync(final=True)


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, default=str) + "\n")
    os.replace(partial, path)


def _now_ms() -> int:
    return int(time.time() * 1000)
