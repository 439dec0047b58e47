"""MLflow tracking: parallel jobs into one SQLite store, FAILED runs, the tiny run's store, helpers."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from leukoflow.engine import journal, summaries, tracking
from tests.conftest import REPO, SNAKEMAKE

PARALLEL_JOBS = 4
CURVE_STEPS = 20
PROVENANCE = ("git_commit", "git_dirty", "config_hash", "data_version", "rule", "snakemake_version", "host")

# A workflow of independent jobs that all log at once, plus one rule that raises.
FAKE_SNAKEFILE = """
import os, sys
sys.path.insert(0, {workflow_dir!r})
config.update({config!r})
include: {tracking_rules!r}

rule all:
    input: expand("out/job_{{i}}.json", i=range({jobs}))

rule work:
    output: summary="out/job_{{i}}.json", table="out/job_{{i}}.csv"
    params: width=3, nested={{"a": {{"b": 1}}}}
    log: "logs/work_{{i}}.log"
    script: "work.py"

rule broken:
    output: summary="out/broken.json"
    log: "logs/broken.log"
    script: "broken.py"
"""

# Each rule's script binds its own `@tracked` keyword entry, as workflow/scripts/ do.
FAKE_WORK_SCRIPT = """
from pathlib import Path
from leukoflow.engine.runtime import run_rule, tracked


@tracked
def work(*, table, width, nested):
    Path(table).write_text("a,b\\n1,2\\n")
    return {{"loss": [1.0 / (step + 1) for step in range({steps})], "score": 0.5, "ok": True,
            "nested": {{"count": 3}}}}


run_rule(snakemake, work)
"""

FAKE_BROKEN_SCRIPT = """
from leukoflow.engine.runtime import run_rule, tracked


@tracked
def broken():
    raise ValueError("this stage fails on purpose")


run_rule(snakemake, broken)
"""


def _tracking_config(**overrides) -> dict:
    section = {"enabled": True, "uri": "sqlite:///results/mlflow.db", "experiment": "leukoflow-test",
               "artifact_location": "results/mlartifacts", "max_artifact_mb": 1, "lock_retries": 6,
               "lock_backoff_s": 0.5}
    return {"seed": 1, "data": {"source": "synthetic"}, "tracking": {**section, **overrides}}


def _write_fake_workflow(directory: Path) -> Path:
    snakefile = directory / "Snakefile"
    snakefile.write_text(FAKE_SNAKEFILE.format(
        workflow_dir=str(REPO / "workflow"), config=_tracking_config(),
        tracking_rules=str(REPO / "workflow" / "rules" / "tracking.smk"), jobs=PARALLEL_JOBS))
    (directory / "work.py").write_text(FAKE_WORK_SCRIPT.format(steps=CURVE_STEPS))
    (directory / "broken.py").write_text(FAKE_BROKEN_SCRIPT)
    return snakefile


def _snakemake(directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    env.pop(tracking.ENV_PARENT_RUN, None)
    return subprocess.run([str(SNAKEMAKE), "--snakefile", str(directory / "Snakefile"), "--directory", str(directory),
                           *args], capture_output=True, text=True, env=env, cwd=directory)


def _runs(db: Path) -> dict[str, dict]:
    """run id -> {name, status, tags} straight from the SQLite store."""
    with sqlite3.connect(db) as connection:
        runs = {run_id: {"name": name, "status": status, "tags": {}}
                for run_id, name, status in connection.execute("select run_uuid, name, status from runs")}
        for run_id, key, value in connection.execute("select run_uuid, key, value from tags"):
            runs[run_id]["tags"][key] = value
    return runs


def _all_text(directory: Path, result: subprocess.CompletedProcess) -> str:
    logs = [path.read_text() for path in (directory / "logs").glob("*.log")]
    return "\n".join([result.stdout, result.stderr, *logs])


@pytest.fixture(scope="module")
def parallel_workflow(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    directory = tmp_path_factory.mktemp("tracking_parallel")
    _write_fake_workflow(directory)
    return directory, _snakemake(directory, "--cores", "4")


@pytest.mark.e2e
def test_parallel_jobs_each_leave_one_finished_child_run(parallel_workflow):
    directory, result = parallel_workflow
    assert result.returncode == 0, result.stderr[-4000:]
    assert tracking.LOCK_MESSAGE not in _all_text(directory, result)
    runs = _runs(directory / "results" / "mlflow.db")
    parents = [run for run in runs.values() if run["tags"].get("leukoflow.run_kind") == "invocation"]
    children = [run for run in runs.values() if run["tags"].get("leukoflow.run_kind") == "rule"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    parent_id = next(run_id for run_id, run in runs.items() if run is parents[0])
    assert sorted(run["name"] for run in children) == sorted(f"work[i={i}]" for i in range(PARALLEL_JOBS))
    for run in children:
        assert run["status"] == "FINISHED"
        assert run["tags"]["mlflow.parentRunId"] == parent_id
        assert all(run["tags"].get(key) for key in PROVENANCE)
        assert run["tags"]["data_version"].startswith("synthetic:seed=1:")
    assert not (directory / tracking.PARENT_RUN_FILE).exists(), "the run-id file is removed at the end"


@pytest.mark.e2e
def test_child_runs_hold_params_curves_and_artifacts(parallel_workflow):
    directory, _ = parallel_workflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("leukoflow-test")
    assert experiment.artifact_location == (directory / "results" / "mlartifacts").as_uri()
    run = client.search_runs([experiment.experiment_id], "attributes.run_name = 'work[i=0]'")[0]
    assert run.data.params["width"] == "3" and run.data.params["nested.a.b"] == "1"
    assert run.data.metrics["score"] == 0.5 and run.data.metrics["ok"] == 1 and run.data.metrics["nested.count"] == 3
    curve = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in curve] == list(range(CURVE_STEPS)) and curve[-1].value == pytest.approx(1 / CURVE_STEPS)
    artifacts = {a.path for folder in ("outputs", "logs") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"outputs/job_0.json", "outputs/job_0.csv", "logs/work_0.log"} <= artifacts


@pytest.mark.e2e
def test_a_failing_rule_leaves_its_run_and_the_parent_failed(parallel_workflow):
    directory, first = parallel_workflow
    assert first.returncode == 0
    result = _snakemake(directory, "--cores", "1", "out/broken.json")
    assert result.returncode != 0
    runs = _runs(directory / "results" / "mlflow.db")
    broken = [run for run in runs.values() if run["name"] == "broken"]
    assert len(broken) == 1 and broken[0]["status"] == "FAILED"
    parent = runs[broken[0]["tags"]["mlflow.parentRunId"]]
    assert parent["status"] == "FAILED"


@pytest.mark.e2e
def test_tiny_run_store_has_one_finished_run_per_job_and_a_parent(tiny_run):
    db = tiny_run / "results" / "mlflow.db"
    runs = _runs(db)
    parents = {run_id: run for run_id, run in runs.items() if run["tags"].get("leukoflow.run_kind") == "invocation"}
    children = [run for run in runs.values() if run["tags"].get("leukoflow.run_kind") == "rule"]
    assert len(parents) == 1 and next(iter(parents.values()))["status"] == "FINISHED"
    # Every tracked job (one that trains, predicts, evaluates, searches or builds) wrote
    # "rule <name> starts (..., tracked=True)" into its own log file.
    logs = [path.read_text() for path in (tiny_run / "logs").rglob("*.log")]
    pattern = r"rule (\S+) starts \(threads=\S+, tracked=True\)"
    jobs = sorted(match.group(1) for text in logs for match in [re.search(pattern, text)] if match)
    assert {"train_detector", "predict_oof", "train_classifier", "predict_classifier", "search_ensemble_weights",
            "build_submission", "export_bundle"} <= set(jobs)
    assert sorted(run["tags"]["rule"] for run in children) == jobs
    for run in children:
        assert run["status"] == "FINISHED"
        assert run["tags"]["mlflow.parentRunId"] in parents
        assert all(run["tags"].get(key) for key in ("git_commit", "config_hash", "data_version"))


# ----------------------------------------------------------------------------- units

def test_tracking_is_off_without_a_tracking_section():
    assert tracking.settings_from_config({}) is None
    assert tracking.settings_from_config({"tracking": {**_tracking_config()["tracking"], "enabled": False}}) is None
    assert not tracking.start_rule_run(SimpleNamespace(config={}, rule="x")).active


def test_relative_store_and_artifact_paths_are_resolved_against_the_working_directory(tmp_path):
    settings = tracking.settings_from_config(_tracking_config(), tmp_path)
    assert settings.uri == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert settings.artifact_location == (tmp_path / "results" / "mlartifacts").as_uri()
    server = tracking.settings_from_config(_tracking_config(uri="http://127.0.0.1:5000", artifact_location="s3://b/x"), tmp_path)
    assert server.uri == "http://127.0.0.1:5000" and server.artifact_location == "s3://b/x"


def test_metric_values_flatten_summaries_and_turn_lists_into_curves():
    values = summaries.metric_values({"a": 1, "b": {"c": 2.5}, "curve": [3, 2], "name": "x", "flag": False,
                                     "mixed": [1, "x"]})
    assert values == [("a", 1.0, 0), ("b.c", 2.5, 0), ("curve", 3.0, 0), ("curve", 2.0, 1), ("flag", 0.0, 0)]


def test_metric_keys_are_cleaned_for_mlflow():
    assert summaries.metric_values({"f1": {"PNN+LY": 0.5}}) == [("f1.PNN_LY", 0.5, 0)]


def test_end_of_job_values_leave_out_what_was_logged_live():
    summary = {"train_losses": [3.0, 2.0], "history": {"train/box_loss": [1.0, 0.5]}, "best_val_score": 0.7,
               "validation": {"epoch": 2, "val/box_loss": 0.4}, "map50": 0.3}
    live_keys = {"train_loss", "train/box_loss", "best_val_score", "val/box_loss"}
    assert summaries.end_of_job_values(summary, live_keys) == [("validation.epoch", 2.0, 0), ("map50", 0.3, 0)]
    assert summaries.end_of_job_values(summary, set()) == summaries.metric_values(summary)  # nothing logged live


def test_requested_targets_come_from_the_dag_settings():
    workflow = SimpleNamespace(dag_settings=SimpleNamespace(targets={"results/b.json", "all"}), default_target="all")
    assert tracking.requested_targets(workflow) == ["all", "results/b.json"]
    default = SimpleNamespace(dag_settings=SimpleNamespace(targets=frozenset()), default_target="all")
    assert tracking.requested_targets(default) == ["all"]
    assert tracking.requested_targets(SimpleNamespace()) == []


def test_lock_errors_are_retried_then_raised(tmp_path):
    settings = tracking.settings_from_config(_tracking_config(lock_retries=2, lock_backoff_s=0.0), tmp_path)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.with_lock_retries(flaky, settings, "test") == "ok" and len(attempts) == 3
    with pytest.raises(RuntimeError, match="database is locked"):
        tracking.with_lock_retries(lambda: (_ for _ in ()).throw(RuntimeError("database is locked")), settings, "t")
    with pytest.raises(ValueError):
        tracking.with_lock_retries(lambda: (_ for _ in ()).throw(ValueError("other")), settings, "t")


@pytest.mark.slow
def test_a_bundle_is_logged_as_a_model(tmp_path):
    settings = tracking.settings_from_config(_tracking_config(), tmp_path)
    client, experiment_id = tracking.open_store(settings)
    run = client.create_run(experiment_id)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "weights.txt").write_text("w")
    model_id = tracking.log_bundle(client, settings, experiment_id, run.info.run_id, bundle, name="ensemble")
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and "READY" in str(model.status)


class _Files(list):
    """A Snakemake named file list: iterates over its paths, names them as attributes."""

    def __init__(self, **named: str) -> None:
        super().__init__(named.values())
        self._names = list(named)
        self.__dict__.update(named)


def _job(tmp_path: Path, name: str) -> SimpleNamespace:
    summary, log = tmp_path / "out" / f"{name}.json", tmp_path / "logs" / f"{name}.log"
    for path in (summary, log):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    return SimpleNamespace(config=_tracking_config(), rule="evaluate", threads=1, wildcards=_Files(fold="2"),
                           params=_Files(width=3), output=_Files(summary=str(summary)), log=_Files(log=str(log)))


@pytest.mark.slow
def test_a_journaled_job_reaches_the_store_with_its_own_times_values_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.ENV_PARENT_RUN, raising=False)
    done = journal.start_journaled_run(_job(tmp_path, "done"))
    done.log_epoch({"loss": 0.5}, step=1)
    done.finish({"score": 0.75, "loss": 0.5}, _job(tmp_path, "done"))
    failed = journal.start_journaled_run(_job(tmp_path, "failed"))
    failed.fail()
    killed = journal.start_journaled_run(_job(tmp_path, "killed"))  # its job died before an end
    (tmp_path / "logs" / "done.log").write_text("rewritten by a later job")
    records = sorted((tmp_path / journal.JOURNAL_DIR).glob("*.json"))
    assert len(records) == 3 and killed.active
    assert journal.flush(_tracking_config(), tmp_path) == 3  # no relay ran: all logged at the end
    assert not list((tmp_path / journal.JOURNAL_DIR).iterdir())
    settings = tracking.settings_from_config(_tracking_config(), tmp_path)
    client, experiment_id = tracking.open_store(settings)
    runs = {run.info.status: run for run in client.search_runs([experiment_id])}
    assert sorted(runs) == ["FAILED", "FINISHED", "KILLED"]
    first = runs["FINISHED"]
    assert first.info.run_name == "evaluate[fold=2]" and first.data.params["width"] == "3"
    assert first.data.metrics == {"score": 0.75, "loss": 0.5}  # the epoch's loss is not logged twice
    assert first.info.end_time >= first.info.start_time == done.record["start_ms"]
    assert first.data.tags["rule"] == "evaluate" and first.data.tags["leukoflow.run_kind"] == "rule"
    log = client.download_artifacts(first.info.run_id, "logs/done.log", str(tmp_path / "dl"))
    assert Path(log).read_text() == "{}"  # the log as the job left it


def test_a_journaled_job_never_imports_mlflow(tmp_path):
    script = (
        "import sys; from types import SimpleNamespace\n"
        "from tests.test_tracking import _job\n"
        "from leukoflow.engine import journal\n"
        "from pathlib import Path\n"
        f"run = journal.start_journaled_run(_job(Path({str(tmp_path)!r}), 'j'))\n"
        f"run.finish({{'score': 1.0}}, _job(Path({str(tmp_path)!r}), 'j'))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'mlflow was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / journal.JOURNAL_DIR).glob("*.json"))) == 1


@pytest.mark.slow
def test_the_relay_shows_a_training_jobs_epochs_while_it_runs_and_logs_each_value_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.ENV_PARENT_RUN, raising=False)
    job = _job(tmp_path, "train")
    run = journal.start_journaled_run(job)
    settings = tracking.settings_from_config(_tracking_config(), tmp_path)
    client, experiment_id = tracking.open_store(settings)
    relay = journal.Relay(client, settings, experiment_id, tmp_path)
    for epoch in (1, 2):
        run.log_epoch({"train_loss": 1.0 / epoch}, step=epoch)
    assert relay.sync(final=False) == 0
    live = client.search_runs([experiment_id])[0]
    assert live.info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(live.info.run_id, "train_loss")] == [1, 2]
    run.log_epoch({"train_loss": 0.25}, step=3)
    run.finish({"train_loss": [1.0, 0.5, 0.25], "best": 0.9}, job)
    assert relay.sync(final=False) == 1 and relay.sync(final=True) == 0
    done = client.get_run(live.info.run_id)
    assert done.info.status == "FINISHED" and done.data.metrics["best"] == 0.9
    history = client.get_metric_history(live.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.25)]  # the summary's curve not again
    assert len(client.search_runs([experiment_id])) == 1


def test_the_relay_thread_starts_with_the_invocation_and_stops_at_its_end(tmp_path):
    config = _tracking_config(relay_s=0.05)
    relay = journal.start(config, tmp_path)
    thread = [t for t in threading.enumerate() if t.name == "leukoflow-journal-relay"]
    assert relay is not None and len(thread) == 1 and thread[0].daemon
    assert journal.flush(config, tmp_path) == 0
    thread[0].join(timeout=5)
    assert not thread[0].is_alive()
    assert journal.start({}, tmp_path) is None and journal.flush({}, tmp_path) == 0  # tracking off
