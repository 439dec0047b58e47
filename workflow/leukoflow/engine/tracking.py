"""MLflow tracking of every workflow invocation: one parent run, one child run per rule job.

Life cycle (docs/hardware.md §3):
- `on_start` (Snakemake `onstart`, main process only: spawned cluster jobs get `--no-hooks`)
  creates or upgrades the store once, so parallel jobs never race on its schema migrations,
  creates the experiment with an explicit artifact location, opens the parent run and exports its
  id in `LEUKOFLOW_PARENT_RUN_ID` (inherited by local jobs and by `sbatch`'s default
  `--export=ALL`). The id is also written to `results/tracking/parent_run.json`, keyed by the
  main process (host + pid), for jobs that do not inherit the environment.
- Tracked jobs journal their child runs (`leukoflow.engine.journal`): a record file the main
  process relays into the store while the job runs, so no job imports MLflow. `start_rule_run`
  opens a child run in the calling process instead, with its params and provenance tags;
  `RuleRun.log_epoch` takes per-epoch metrics (via `leukoflow.engine.live`), `RuleRun.finish`
  logs the summary's numbers that live logging did not (`summaries.end_of_job_values`; lists are
  per-step curves), small output files as artifacts and a declared `bundle` output as an MLflow
  model, and ends the run FINISHED; `RuleRun.fail` ends it FAILED.
- `on_success` / `on_error` log results/metrics.json on the parent and end it.

SQLite under parallel writers: MLflow already waits up to 20 s for a lock (busy_timeout); on top,
every store call is retried with exponential backoff when SQLite still reports
"database is locked", and opening a SQLite store takes an exclusive file lock so that no two
processes ever run the schema migrations at once (even when `onstart` was skipped).

Nothing here imports MLflow at module level: the Snakefile imports this module on every parse
(dry runs, cluster jobs), and MLflow costs 1.5-3 s to import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from leukoflow.engine.provenance import config_hash, provenance_tags
from leukoflow.engine.summaries import end_of_job_values, flatten, metric_key, metric_values

ENV_PARENT_RUN = "LEUKOFLOW_PARENT_RUN_ID"
PARENT_RUN_FILE = Path("results/tracking/parent_run.json")
# Files worth keeping beside a run: plots, small tables, summaries, logs.
SMALL_ARTIFACT_SUFFIXES = frozenset({".png", ".svg", ".pdf", ".html", ".csv", ".tsv", ".json", ".txt", ".md", ".yaml"})
BUNDLE_OUTPUT = "bundle"  # a rule output with this name is logged as an MLflow model
# MLflow's own limits (mlflow.utils.validation): longer values are rejected, larger batches split.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAGS_PER_BATCH = 100
LOCK_MESSAGE = "database is locked"

logger = logging.getLogger("leukoflow.engine.tracking")
T = TypeVar("T")


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class TrackingSettings:
    """The `tracking:` config section with paths resolved against the working directory."""

    uri: str
    experiment: str
    artifact_location: str
    max_artifact_mb: float
    lock_retries: int
    lock_backoff_s: float
    relay_s: float

    @property
    def is_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:///")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.uri.removeprefix("sqlite:///"))


def settings_from_config(config: Mapping[str, Any], workdir: str | Path | None = None) -> TrackingSettings | None:
    """Tracking settings of a workflow config, or None when tracking is off or not configured."""
    section = config.get("tracking") or {}
    if not section.get("enabled", False):
        return None
    workdir = Path(workdir or os.getcwd()).resolve()
    return TrackingSettings(
        uri=resolve_store_uri(section["uri"], workdir),
        experiment=section["experiment"],
        artifact_location=resolve_artifact_location(section["artifact_location"], workdir),
        max_artifact_mb=float(section.get("max_artifact_mb", 5)),
        lock_retries=int(section.get("lock_retries", 6)),
        lock_backoff_s=float(section.get("lock_backoff_s", 0.5)),
        relay_s=float(section.get("relay_s", 2.0)),
    )


def resolve_store_uri(uri: str, workdir: Path) -> str:
    """`sqlite:///results/mlflow.db` (relative) becomes absolute; other URIs pass unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///"))
    return f"sqlite:///{path if path.is_absolute() else (workdir / path)}"


def resolve_artifact_location(location: str, workdir: Path) -> str:
    """A plain path becomes an absolute `file://` URI; URIs with a scheme (s3://, ...) pass."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location):
        return location
    path = Path(location)
    return (path if path.is_absolute() else workdir / path).as_uri()


# ----------------------------------------------------------------------------- store access

def with_lock_retries(call: Callable[[], T], settings: TrackingSettings, what: str) -> T:
    """Run a store call; when SQLite says "database is locked", retry with exponential backoff."""
    jitter = random.Random(os.getpid())  # spreads retries of simultaneous jobs; no result depends on it
    for attempt in range(settings.lock_retries + 1):
        try:
            return call()
        except Exception as error:  # MlflowException or sqlalchemy OperationalError, both wrap the text
            if LOCK_MESSAGE not in str(error) or attempt == settings.lock_retries:
                raise
            delay = settings.lock_backoff_s * 2**attempt * (1 + jitter.random())
            logger.warning("tracking: %s hit '%s' (attempt %d/%d), retrying in %.1f s",
                           what, LOCK_MESSAGE, attempt + 1, settings.lock_retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _store_lock(settings: TrackingSettings) -> Iterator[None]:
    """Exclusive lock beside a SQLite store while it is opened (schema creation/migration)."""
    if not settings.is_sqlite:
        yield
        return
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with open(_sibling(settings.sqlite_path, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _store_is_ready(settings: TrackingSettings, mlflow_version: str) -> bool:
    """A SQLite store this MLflow version already migrated (marker written under the lock) needs
    no lock: jobs then open it concurrently, as docs/hardware.md §3 measured to be safe."""
    marker = _sibling(settings.sqlite_path, ".ready")
    return settings.sqlite_path.is_file() and marker.is_file() and marker.read_text().strip() == mlflow_version


def open_store(settings: TrackingSettings) -> tuple[Any, str]:
    """(MlflowClient, experiment id). A SQLite store is created or migrated by one process at a
    time (file lock), once per MLflow version; after that it is opened without the lock."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.tracking import MlflowClient  # opening the client creates/migrates the store

    if not settings.is_sqlite or _store_is_ready(settings, mlflow.__version__):
        client = with_lock_retries(lambda: MlflowClient(tracking_uri=settings.uri), settings, "open store")
        return client, with_lock_retries(lambda: _experiment_id(client, settings), settings, "open experiment")
    with _store_lock(settings):
        client = with_lock_retries(lambda: MlflowClient(tracking_uri=settings.uri), settings, "open store")
        experiment_id = with_lock_retries(lambda: _experiment_id(client, settings), settings, "open experiment")
        _sibling(settings.sqlite_path, ".ready").write_text(mlflow.__version__ + "\n")
    return client, experiment_id


def _experiment_id(client: Any, settings: TrackingSettings) -> str:
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(settings.experiment, artifact_location=settings.artifact_location)
    except Exception as error:  # another job created it a moment ago
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise error
        return experiment.experiment_id


# ----------------------------------------------------------------------------- parent run

def requested_targets(workflow: Any) -> list[str]:
    """The targets named on the command line, else the workflow's default target, for the parent run's tags.

    Read from `workflow.dag_settings` (Snakemake's DAGSettings of its settings API) and
    `workflow.default_target`, not from the DAG's internals.
    """
    settings = getattr(workflow, "dag_settings", None)
    named = sorted(str(target) for target in getattr(settings, "targets", ()) or ())
    default = getattr(workflow, "default_target", None)
    return named or ([str(default)] if default else [])


def on_start(config: Mapping[str, Any], workdir: str | Path | None = None, *, targets: list[str] | None = None) -> str | None:
    """Snakemake `onstart`: initialise the store, open (or reuse) the invocation's parent run."""
    settings = settings_from_config(config, workdir)
    if settings is None:
        return None
    started = time.perf_counter()
    client, experiment_id = open_store(settings)
    run_file = _run_file(workdir)
    existing = _read_run_file(run_file)
    if existing and existing.get("owner") == _invocation_owner():
        os.environ[ENV_PARENT_RUN] = existing["run_id"]
        return existing["run_id"]
    if existing:
        _close_abandoned_parent(client, settings, existing)
    tags = {**provenance_tags(config), "leukoflow.run_kind": "invocation",
            "targets": ",".join(targets or []), "mlflow.source.name": "snakemake"}
    run = with_lock_retries(
        lambda: client.create_run(experiment_id, tags=_truncate_tags(tags), run_name=f"workflow-{time.strftime('%Y%m%d-%H%M%S')}"),
        settings, "create parent run")
    run_id = run.info.run_id
    _write_run_file(run_file, {"run_id": run_id, "owner": _invocation_owner(), "experiment_id": experiment_id})
    os.environ[ENV_PARENT_RUN] = run_id
    logger.info("tracking: parent run %s in %s (%.1f s)", run_id, settings.uri, time.perf_counter() - started)
    return run_id


def on_finish(config: Mapping[str, Any], *, succeeded: bool, workdir: str | Path | None = None,
              metrics_json: str | Path = "results/metrics.json") -> None:
    """Snakemake `onsuccess`/`onerror`: headline metrics on the parent run, then end it."""
    settings = settings_from_config(config, workdir)
    run_file = _run_file(workdir)
    existing = _read_run_file(run_file)
    if settings is None or not existing or existing.get("owner") != _invocation_owner():
        return
    client, _ = open_store(settings)
    run_id = existing["run_id"]
    metrics_path = Path(workdir or ".") / metrics_json
    if succeeded and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        _log_values(client, settings, run_id, metric_values(metrics))
        with_lock_retries(lambda: client.log_artifact(run_id, str(metrics_path)), settings, "log metrics.json")
    status = "FINISHED" if succeeded else "FAILED"
    with_lock_retries(lambda: client.set_terminated(run_id, status), settings, "end parent run")
    run_file.unlink(missing_ok=True)
    os.environ.pop(ENV_PARENT_RUN, None)


def _run_file(workdir: str | Path | None) -> Path:
    return Path(workdir or ".") / PARENT_RUN_FILE


def _invocation_owner() -> str:
    """The main snakemake process: a second `onstart` call in it reuses its parent run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_run_file(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _close_abandoned_parent(client: Any, settings: TrackingSettings, existing: dict[str, Any]) -> None:
    """A parent run left RUNNING by a killed invocation is ended KILLED (Snakemake's lock rules out
    a live invocation in the same working directory)."""
    with contextlib.suppress(Exception):
        run = client.get_run(existing["run_id"])
        if run.info.status == "RUNNING":
            with_lock_retries(lambda: client.set_terminated(existing["run_id"], "KILLED"), settings, "end stale parent")


def parent_run_id(workdir: str | Path | None = None) -> str | None:
    """The invocation's parent run: from the environment, else from the run file."""
    if os.environ.get(ENV_PARENT_RUN):
        return os.environ[ENV_PARENT_RUN]
    existing = _read_run_file(_run_file(workdir))
    return existing["run_id"] if existing else None


# ----------------------------------------------------------------------------- rule runs

class RuleRun:
    """The MLflow run of one rule job (a no-op object when tracking is off)."""

    def __init__(self, client: Any = None, settings: TrackingSettings | None = None, run_id: str | None = None,
                 experiment_id: str | None = None) -> None:
        self.client, self.settings, self.run_id, self.experiment_id = client, settings, run_id, experiment_id
        self.live_keys: set[str] = set()  # metric keys logged per epoch while the job ran

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def finish(self, summary: Mapping[str, Any], smk: Any) -> None:
        """Log the summary's numbers, small outputs, logs and a `bundle` model; end FINISHED."""
        if not self.active:
            return
        started = time.perf_counter()
        try:
            _log_values(self.client, self.settings, self.run_id, end_of_job_values(summary, self.live_keys))
            for path, folder in _small_files(smk, self.settings.max_artifact_mb):
                self._call(lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f), f"log artifact {path}")
            bundle = _named_output(smk, BUNDLE_OUTPUT)
            if bundle is not None:
                log_bundle(self.client, self.settings, self.experiment_id, self.run_id, Path(bundle), name=smk.rule)
            self._call(lambda: self.client.set_terminated(self.run_id, "FINISHED"), "end run")
            logger.info("tracking: run %s finished in %.2f s", self.run_id, time.perf_counter() - started)
        except Exception:
            logger.warning("tracking: could not complete run %s; the rule's outputs are unaffected",
                           self.run_id, exc_info=True)

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one epoch's numbers at `step` now, while the job runs (`leukoflow.engine.live`)."""
        if not self.active:
            return
        values = [(key, value, step) for key, value, _ in metric_values(metrics)]
        try:
            _log_values(self.client, self.settings, self.run_id, values)
            self.live_keys.update(key for key, _, _ in values)
        except Exception:
            logger.warning("tracking: could not log step %d to run %s", step, self.run_id, exc_info=True)

    def fail(self) -> None:
        """End the run FAILED (the rule raised); the log file is kept as an artifact."""
        if not self.active:
            return
        try:
            self._call(lambda: self.client.set_terminated(self.run_id, "FAILED"), "end failed run")
        except Exception:
            logger.warning("tracking: could not mark run %s FAILED", self.run_id, exc_info=True)

    def _call(self, call: Callable[[], T], what: str) -> T:
        return with_lock_retries(call, self.settings, what)


def start_rule_run(smk: Any) -> RuleRun:
    """Open the child run of a rule job (under the invocation's parent run); no-op when off.

    A tracking store that cannot be reached is reported in the rule's log and the rule runs
    untracked: losing a long training job to a tracking hiccup would be worse than a missing run.
    """
    settings = settings_from_config(getattr(smk, "config", {}) or {})
    if settings is None:
        return RuleRun()
    try:
        started = time.perf_counter()
        client, experiment_id = open_store(settings)
        tags = {**provenance_tags(smk.config), **rule_tags(smk)}
        parent = parent_run_id()
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = with_lock_retries(
            lambda: client.create_run(experiment_id, tags=_truncate_tags(tags), run_name=run_name(smk)),
            settings, "create run")
        rule_run = RuleRun(client, settings, run.info.run_id, experiment_id)
        params = {key: _param_value(value) for key, value in rule_params(smk).items()}
        from mlflow.entities import Param

        for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_PER_BATCH):
            rule_run._call(lambda c=chunk: client.log_batch(rule_run.run_id, params=c), "log params")
        logger.info("tracking: run %s (parent %s) opened in %.2f s", rule_run.run_id, parent, time.perf_counter() - started)
        return rule_run
    except Exception:
        logger.warning("tracking: could not open a run in %s; the rule runs untracked", settings.uri, exc_info=True)
        return RuleRun()


def run_name(smk: Any) -> str:
    wildcards = _wildcards(smk)
    return smk.rule + (f"[{','.join(f'{k}={v}' for k, v in wildcards.items())}]" if wildcards else "")


def rule_tags(smk: Any) -> dict[str, str]:
    wildcards = _wildcards(smk)
    tags = {
        "rule": smk.rule,
        "wildcards": json.dumps(wildcards, sort_keys=True),
        "leukoflow.run_kind": "rule",
        "mlflow.source.name": smk.rule,
        "job_key": f"{smk.rule}/{json.dumps(wildcards, sort_keys=True)}/{config_hash(smk.config)}",
    }
    tags.update({f"wildcard.{key}": str(value) for key, value in wildcards.items()})
    return tags


def rule_params(smk: Any) -> dict[str, Any]:
    """The rule's configuration, flattened: its named params, threads, and the config section named
    after the rule when there is one."""
    params = flatten(dict(_named_items(smk.params)))
    params["threads"] = getattr(smk, "threads", 1)
    section = (smk.config or {}).get(smk.rule)
    if isinstance(section, Mapping):
        params.update(flatten(dict(section), prefix=f"config.{smk.rule}."))
    return {metric_key(key): value for key, value in params.items()}


def _wildcards(smk: Any) -> dict[str, str]:
    return {key: str(value) for key, value in _named_items(getattr(smk, "wildcards", {}))}


def _named_items(namedlist: Any) -> list[tuple[str, Any]]:
    """Named entries of a Snakemake Namedlist (or a plain mapping in tests)."""
    if isinstance(namedlist, Mapping):
        return list(namedlist.items())
    if hasattr(namedlist, "_names"):
        return [(name, getattr(namedlist, name)) for name in namedlist._names]
    return list(namedlist.items()) if hasattr(namedlist, "items") else []


def _named_output(smk: Any, name: str) -> str | None:
    return dict(_named_items(smk.output)).get(name)


def _small_files(smk: Any, max_mb: float) -> list[tuple[Path, str]]:
    """Output and log files small enough to copy into the run (plots, tables, summaries)."""
    limit = max_mb * 1024 * 1024
    found = []
    for folder, files in (("outputs", list(smk.output)), ("logs", list(smk.log))):
        for name in files:
            path = Path(name)
            if path.is_file() and path.suffix.lower() in SMALL_ARTIFACT_SUFFIXES | {".log"} and path.stat().st_size <= limit:
                found.append((path, folder))
    return found


def log_bundle(client: Any, settings: TrackingSettings, experiment_id: str, run_id: str, bundle: Path, *, name: str) -> str:
    """Log a model bundle (a file or folder) as an MLflow 3 LoggedModel of the run; its model id."""
    model = with_lock_retries(lambda: client.create_logged_model(experiment_id, name=name, source_run_id=run_id),
                              settings, "create model")
    model_id = model.model_id
    if bundle.is_dir():
        with_lock_retries(lambda: client.log_model_artifacts(model_id, str(bundle)), settings, "log model files")
    else:
        with_lock_retries(lambda: client.log_model_artifact(model_id, str(bundle)), settings, "log model file")
    with_lock_retries(lambda: client.finalize_logged_model(model_id, "READY"), settings, "finalize model")
    return model_id


# ----------------------------------------------------------------------------- values

def _log_values(client: Any, settings: TrackingSettings, run_id: str, values: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in values]
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        with_lock_retries(lambda c=chunk: client.log_batch(run_id, metrics=c), settings, "log metrics")


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_VALUE_LENGTH]


def _truncate_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {key: str(value)[:MAX_TAG_VALUE_LENGTH] for key, value in tags.items()}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
