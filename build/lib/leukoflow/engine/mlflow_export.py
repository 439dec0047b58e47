"""The MLflow record of a release, as plain files: exported from the run's store, imported into any store.

A published result is easier to trust when readers can open its runs without re-running it. The
export holds, per run of one experiment, its name, status, times, params, tags, the full history
of every metric (step, timestamp, value) and its artefacts; `import_runs` recreates them in
another store (a fresh SQLite file is enough) under an experiment of the same name, where
`mlflow ui` shows them. Run ids change on import; the original id is kept in the tag
`leukoflow.exported_run_id`.

    leukoflow mlflow-export --store sqlite:///results/mlflow.db --experiment leukoflow --out release/mlflow
    leukoflow mlflow-import --store sqlite:///review/mlflow.db --export release/mlflow
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

INDEX_FILE = "export.json"
RUN_FILE = "run.json"
ORIGINAL_ID_TAG = "leukoflow.exported_run_id"
FORMAT_VERSION = 1


def _client(store: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


def export_runs(*, store: str, experiment: str, out_dir: str | Path) -> dict[str, Any]:
    """Write every run of `experiment` under `out_dir`; returns the index written to export.json."""
    client = _client(store)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"mlflow export: no experiment {experiment!r} in {store}")
    out_dir = Path(out_dir)
    runs = client.search_runs([found.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"])
    index = {"format_version": FORMAT_VERSION, "experiment": experiment, "runs": []}
    for run in runs:
        folder = out_dir / "runs" / run.info.run_id
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time,
            "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": {key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run.info.run_id, key)]
                        for key in run.data.metrics},
        }
        if client.list_artifacts(run.info.run_id):
            client.download_artifacts(run.info.run_id, "", str(folder / "artifacts"))
        (folder / RUN_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        index["runs"].append(run.info.run_id)
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return index


def import_runs(*, store: str, export_dir: str | Path, experiment: str | None = None) -> dict[str, str]:
    """Recreate the exported runs in `store`; returns old run id -> new run id."""
    from mlflow.entities import Metric, Param

    export_dir = Path(export_dir)
    index = json.loads((export_dir / INDEX_FILE).read_text())
    client = _client(store)
    name = experiment or index["experiment"]
    existing = client.get_experiment_by_name(name)
    experiment_id = existing.experiment_id if existing else client.create_experiment(name)
    mapping = {}
    for old_id in index["runs"]:
        folder = export_dir / "runs" / old_id
        record = json.loads((folder / RUN_FILE).read_text())
        tags = {key: value for key, value in record["tags"].items() if not key.startswith("mlflow.") or
                key in ("mlflow.runName", "mlflow.source.git.commit", "mlflow.note.content")}
        run = client.create_run(experiment_id, start_time=record["start_time"], run_name=record["run_name"],
                                tags={**tags, ORIGINAL_ID_TAG: old_id})
        new_id = run.info.run_id
        metrics = [Metric(key, value, timestamp, step) for key, points in record["metrics"].items()
                   for step, timestamp, value in points]
        params = [Param(key, value) for key, value in record["params"].items()]
        for start in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(new_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(new_id, metrics=metrics[start:start + 1000])
        artifacts = folder / "artifacts"
        if artifacts.is_dir() and any(artifacts.iterdir()):
            client.log_artifacts(new_id, str(artifacts))
        client.set_terminated(new_id, status=record["status"], end_time=record["end_time"])
        mapping[old_id] = new_id
    return mapping


# ----------------------------------------------------------------------------- command line

EXPORT_HELP = "export one MLflow experiment's runs (params, metrics, tags, artefacts) as files"
IMPORT_HELP = "import runs exported by `leukoflow mlflow-export` into an MLflow store"


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="sqlite:///results/mlflow.db", help="tracking URI (default the run's)")
    parser.add_argument("--experiment", required=True, help="experiment name (config tracking.experiment)")
    parser.add_argument("--out", required=True, help="folder to write")


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="tracking URI to import into, e.g. sqlite:///review.db")
    parser.add_argument("--export", required=True, help="folder written by mlflow-export")
    parser.add_argument("--experiment", help="experiment name (default: the exported one's)")


def run_export(args: argparse.Namespace) -> int:
    index = export_runs(store=args.store, experiment=args.experiment, out_dir=args.out)
    print(json.dumps({"experiment": index["experiment"], "runs": len(index["runs"]), "out": args.out}))
    return 0


def run_import(args: argparse.Namespace) -> int:
    mapping = import_runs(store=args.store, export_dir=args.export, experiment=args.experiment)
    print(json.dumps({"runs": len(mapping), "store": args.store}))
    return 0
