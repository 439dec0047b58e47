"""A release's MLflow record travels as files: exported from one store, imported into a fresh one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'source.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("leukoflow-release", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, run_name="train_detector det1 fold0", tags={"git_commit": "abc123"})
    client.log_param(run.info.run_id, "epochs", "6")
    for epoch in range(3):
        client.log_metric(run.info.run_id, "train/box_loss", 1.0 / (epoch + 1), step=epoch, timestamp=1000 + epoch)
    (tmp_path / "summary.json").write_text('{"oof_giou": 0.83}')
    client.log_artifact(run.info.run_id, str(tmp_path / "summary.json"), "summary")
    client.set_terminated(run.info.run_id, "FINISHED")
    other = client.create_run(experiment, run_name="search_ensemble_weights")
    client.log_metric(other.info.run_id, "best_score", 0.46)
    client.set_terminated(other.info.run_id, "FINISHED")
    del mlflow
    return uri


@pytest.mark.slow  # a subprocess or a real store: kept out of the unit tier (make test-fast)
def test_export_then_import_into_a_fresh_store_keeps_params_metrics_tags_and_artefacts(store, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cli = [sys.executable, "-m", "leukoflow.cli"]
    exported = subprocess.run([*cli, "mlflow-export", "--store", store, "--experiment", "leukoflow-release",
                               "--out", str(tmp_path / "export")], capture_output=True, text=True, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads(exported.stdout)["runs"] == 2
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    imported = subprocess.run([*cli, "mlflow-import", "--store", fresh, "--export", str(tmp_path / "export")],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr[-3000:]

    client = MlflowClient(tracking_uri=fresh)
    experiment = client.get_experiment_by_name("leukoflow-release")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}  # what the UI lists
    assert set(runs) == {"train_detector det1 fold0", "search_ensemble_weights"}
    detector = runs["train_detector det1 fold0"]
    assert detector.info.status == "FINISHED" and detector.data.params == {"epochs": "6"}
    assert detector.data.tags["git_commit"] == "abc123" and "leukoflow.exported_run_id" in detector.data.tags
    history = client.get_metric_history(detector.info.run_id, "train/box_loss")
    assert [(m.step, m.timestamp, m.value) for m in history] == [(0, 1000, 1.0), (1, 1001, 0.5), (2, 1002, 1 / 3)]
    assert runs["search_ensemble_weights"].data.metrics == {"best_score": 0.46}
    downloaded = client.download_artifacts(detector.info.run_id, "summary/summary.json", str(tmp_path / "check"))
    assert json.loads(Path(downloaded).read_text()) == {"oof_giou": 0.83}
