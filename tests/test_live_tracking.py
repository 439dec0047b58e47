"""Live tracking: per-epoch metrics reach the job's MLflow run while it trains (through its journal
and the main process's relay, `leukoflow.engine.journal`), epochs that skipped validation log no
validation metric at all (never a zero filler), and the job's summary at its end adds no second
series of what was logged live."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from leukoflow.classification.loop import train_fold
from leukoflow.detection import yolo as detection
from leukoflow.engine import journal, live, summaries, tracking
from tests.test_classification import SETTINGS, _fold_data, _spec, dataset  # noqa: F401 - `dataset` is a fixture
from tests.test_tracking import _job, _tracking_config

VALIDATION_PREFIXES = ("metrics/", "val/")


class _RelayedRun(journal.JournaledRun):
    """A tracked job's journaled run, with the main process's relay passing after each write as
    its thread does every `tracking.relay_s` seconds."""

    def __init__(self, relay: journal.Relay, job: SimpleNamespace) -> None:
        started = journal.start_journaled_run(job)
        super().__init__(started.settings, started.path, started.record)
        self.relay = relay
        relay.sync(final=False)
        (self.run_id, _), = relay.open.values()

    def log_epoch(self, metrics, step: int) -> None:
        super().log_epoch(metrics, step)
        self.relay.sync(final=False)

    def finish(self, summary, smk) -> None:
        super().finish(summary, smk)
        self.relay.sync(final=False)


@pytest.fixture()
def rule_run(tmp_path, monkeypatch) -> _RelayedRun:
    """A tracked job's run as `run_rule` starts it, relayed into a fresh SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.ENV_PARENT_RUN, raising=False)
    settings = tracking.settings_from_config(_tracking_config(), tmp_path)
    client, experiment_id = tracking.open_store(settings)
    return _RelayedRun(journal.Relay(client, settings, experiment_id, tmp_path), _job(tmp_path, "train"))


def _reader(rule_run: _RelayedRun):
    """A second client on the store, as the MLflow UI reads it."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=rule_run.settings.uri)


def _logged_keys(client, run_id: str) -> set[str]:
    return set(client.get_run(run_id).data.metrics)


def test_log_epoch_is_a_no_op_outside_a_tracked_job():
    live.log_epoch({"train_loss": 1.0}, step=1)  # no current run
    with live.current_run(tracking.RuleRun()):  # tracking off
        live.log_epoch({"train_loss": 1.0}, step=1)


def test_classifier_epochs_are_readable_while_it_trains(rule_run, dataset):  # noqa: F811
    spec = _spec(epochs=3)
    arrays, train, valid = _fold_data(dataset, spec)
    reader, seen = _reader(rule_run), {}

    def read_store(epoch: int) -> None:
        run = reader.get_run(rule_run.run_id)
        seen[epoch] = {"status": run.info.status,
                       "train_loss": [m.step for m in reader.get_metric_history(rule_run.run_id, "train_loss")],
                       "val_score": [m.step for m in reader.get_metric_history(rule_run.run_id, "val_score")]}

    with live.current_run(rule_run):
        summary = train_fold(spec, arrays, train, valid, rule_run.settings.sqlite_path.parent / "fold0",
                             fold=0, settings=SETTINGS, on_epoch_end=read_store)
    assert seen[1] == {"status": "RUNNING", "train_loss": [1], "val_score": [1]}  # epoch 1, training goes on
    assert seen[2]["train_loss"] == [1, 2] and seen[3]["train_loss"] == [1, 2, 3]
    history = reader.get_metric_history(rule_run.run_id, "train_loss")
    assert [m.value for m in history] == pytest.approx(summary["train_losses"])
    best = reader.get_metric_history(rule_run.run_id, "best_val_score")
    assert best[-1].value == pytest.approx(summary["best_val_score"])


def test_classifier_without_a_validation_fold_logs_no_validation_metric(rule_run, dataset):  # noqa: F811
    spec = _spec(epochs=2)
    arrays, train, valid = _fold_data(dataset, spec)
    with live.current_run(rule_run):
        train_fold(spec, arrays, train, valid.subset(valid.real & False), rule_run.settings.sqlite_path.parent,
                   fold=0, settings=SETTINGS)
    assert _logged_keys(_reader(rule_run), rule_run.run_id) == {"train_loss"}


def _trainer(epoch: int, metrics: dict[str, float]) -> SimpleNamespace:
    """What `EpochLog` reads of an ultralytics trainer."""
    return SimpleNamespace(epoch=epoch, epochs=3, tloss={"box_loss": 1.5 - epoch / 10, "cls_loss": 2.0},
                           lr={"lr/pg0": 0.01}, metrics=metrics,
                           label_loss_items=lambda loss: {f"train/{k}": v for k, v in loss.items()})


def test_detector_epochs_without_validation_log_no_validation_metric(rule_run):
    stale = {"metrics/precision(B)": 0.0, "metrics/mAP50(B)": 0.0, "val/box_loss": 0.0}  # ultralytics' filler
    epoch_log = detection.EpochLog()
    with live.current_run(rule_run):
        for epoch in range(3):
            epoch_log.trained(_trainer(epoch, stale))
            if epoch == 2:  # `val: false` validates the last epoch only
                epoch_log.validated(None)
                stale = {"metrics/precision(B)": 0.25, "metrics/mAP50(B)": 0.5, "val/box_loss": 1.25}
            epoch_log.fit_epoch_end(_trainer(epoch, stale))
        epoch_log.validated(None)  # ultralytics' closing check of best.pt: no trained epoch, not logged
        epoch_log.fit_epoch_end(_trainer(3, stale))
    reader = _reader(rule_run)
    assert [m.step for m in reader.get_metric_history(rule_run.run_id, "train/box_loss")] == [1, 2, 3]
    for key in ("metrics/precision_B_", "metrics/mAP50_B_", "val/box_loss"):
        assert [(m.step, m.value) for m in reader.get_metric_history(rule_run.run_id, key)] == [(3, stale[
            key.replace("_B_", "(B)")])]


def test_summary_history_leaves_out_validation_that_did_not_run():
    history = pd.DataFrame({"epoch": [1, 2, 3], "train/box_loss": [3.0, 2.0, 1.0], "metrics/mAP50(B)": [0, 0, 0.4],
                            "val/box_loss": [0, 0, 2.5]})
    cleaned = detection.without_skipped_validation(history, validated_every_epoch=False)
    assert cleaned["metrics/mAP50(B)"].isna().tolist() == [True, True, False]
    assert cleaned["train/box_loss"].tolist() == [3.0, 2.0, 1.0]
    assert detection.without_skipped_validation(history, validated_every_epoch=True).equals(history)
    assert not any(key.startswith(VALIDATION_PREFIXES)
                   for key, _, _ in summaries.metric_values({"history": cleaned.dropna(axis="columns").to_dict("list")}))


@pytest.mark.slow
def test_a_detector_trained_without_validation_logs_it_for_the_last_epoch_only(rule_run, tmp_path):
    from tests.test_detection import make_smear_tables, train
    from leukoflow.detection import datasets

    smears = make_smear_tables(tmp_path / "smears", n_train=8, n_test=2, n_folds=2, size=96)
    dataset_dir = tmp_path / "fold0"
    datasets.write_yolo_dataset(images=smears["images"], boxes=smears["boxes"], folds=smears["folds"], fold=0,
                                out_dir=dataset_dir)
    with live.current_run(rule_run):
        summary = train(dataset_dir, tmp_path / "run", val=False)
    reader = _reader(rule_run)
    keys = _logged_keys(reader, rule_run.run_id)
    validation_keys = {key for key in keys if key.startswith(VALIDATION_PREFIXES)}
    assert "train/box_loss" in keys and validation_keys
    assert [m.step for m in reader.get_metric_history(rule_run.run_id, "train/box_loss")] == [1, 2]
    for key in validation_keys:
        assert [m.step for m in reader.get_metric_history(rule_run.run_id, key)] == [2], key
    assert not [key for key in summary["history"] if key.startswith(VALIDATION_PREFIXES)]
    assert summary["validation"]["epoch"] == 2 and "metrics/mAP50(B)" in summary["validation"]
    written = pd.read_csv(tmp_path / "run.csv")
    assert written["val/box_loss"].isna().tolist() == [True, False]


# ----------------------------------------------------------------------------- one series per quantity

def _finish(rule_run: _RelayedRun, summary: dict) -> dict[str, list[tuple[int, float]]]:
    """End the run as `run_rule` does after the entry returns; every metric's (step, value) points."""
    rule_run.finish(summary, SimpleNamespace(output=[], log=[], rule="train"))
    reader = _reader(rule_run)
    assert reader.get_run(rule_run.run_id).info.status == "FINISHED"
    return {key: [(m.step, m.value) for m in reader.get_metric_history(rule_run.run_id, key)]
            for key in _logged_keys(reader, rule_run.run_id)}


def _series(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {key: [step for step, _ in steps] for key, steps in points.items() if len(steps) > 1}


def test_a_tracked_classifier_job_shows_each_quantity_once(rule_run, dataset):  # noqa: F811
    spec = _spec(epochs=3)
    arrays, train, valid = _fold_data(dataset, spec)
    with live.current_run(rule_run):
        summary = train_fold(spec, arrays, train, valid, rule_run.settings.sqlite_path.parent / "fold0", fold=0,
                             settings=SETTINGS)
    points = _finish(rule_run, summary)
    assert _series(points) == {"train_loss": [1, 2, 3], "val_score": [1, 2, 3], "best_val_score": [1, 2, 3]}
    assert "train_losses" not in points and not any(key.startswith("history") for key in points)
    assert points["best_val_score"][-1][1] == pytest.approx(summary["best_val_score"])
    assert points["n_train"] == [(0, len(train))]  # what live logging did not log still comes at the end


def test_a_resumed_classifier_job_logs_its_earlier_epochs_once(rule_run, dataset, tmp_path):  # noqa: F811
    spec = _spec(epochs=3)
    arrays, train, valid = _fold_data(dataset, spec)

    class Killed(RuntimeError):
        pass

    def killed_after_first_epoch(epoch: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        train_fold(spec, arrays, train, valid, tmp_path, fold=0, settings=SETTINGS,
                   on_epoch_end=killed_after_first_epoch)
    with live.current_run(rule_run):
        summary = train_fold(spec, arrays, train, valid, tmp_path, fold=0, settings=SETTINGS)
    points = _finish(rule_run, summary)
    assert _series(points)["train_loss"] == [1, 2, 3]
    assert [value for _, value in points["train_loss"]] == pytest.approx(summary["train_losses"])


def test_a_tracked_detector_job_shows_each_quantity_once(rule_run, tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "images" / "a.png").write_bytes(b"")
    epoch_log, rows = detection.EpochLog(), []
    with live.current_run(rule_run):
        for epoch in range(3):
            validation = {"metrics/mAP50(B)": 0.1 * epoch, "val/box_loss": 2.0 - epoch / 10}
            trainer = _trainer(epoch, validation)
            epoch_log.trained(trainer)
            epoch_log.validated(None)
            epoch_log.fit_epoch_end(trainer)
            rows.append({"epoch": epoch + 1, **trainer.label_loss_items(trainer.tloss), **trainer.lr, **validation})
    summary = detection._training_summary(pd.DataFrame(rows), tmp_path / "dataset.yaml", {"epochs": 3}, "fresh",
                                          None, 1.0, "cpu")
    points = _finish(rule_run, summary)
    live_keys = {"train/box_loss", "train/cls_loss", "lr/pg0", "metrics/mAP50_B_", "val/box_loss"}
    assert _series(points) == {key: [1, 2, 3] for key in live_keys}
    assert not [key for key in points if key.startswith(("history.", "validation.metrics", "validation.val"))]
    assert points["map50"] == [(0, pytest.approx(0.2))]
