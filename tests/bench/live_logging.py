"""Cost of live tracking per epoch: `live.log_epoch` of one detector epoch (3 train losses, 3
learning rates, 4 metrics, 3 validation losses) into a fresh SQLite store, as a training job pays it.

    PYTHONPATH=workflow .venv/bin/python tests/bench/live_logging.py --epochs 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from leukoflow.engine import live, tracking  # noqa: E402
from tests.test_tracking import _tracking_config  # noqa: E402

EPOCH = {**{f"train/{k}_loss": 1.0 for k in ("box", "cls", "dfl")}, **{f"lr/pg{k}": 0.01 for k in range(3)},
         **{f"metrics/{k}(B)": 0.5 for k in ("precision", "recall", "mAP50", "mAP50-95")},
         **{f"val/{k}_loss": 1.0 for k in ("box", "cls", "dfl")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    epochs = parser.parse_args().epochs
    with tempfile.TemporaryDirectory() as folder:
        settings = tracking.settings_from_config(_tracking_config(), folder)
        client, experiment_id = tracking.open_store(settings)
        run = tracking.RuleRun(client, settings, client.create_run(experiment_id).info.run_id, experiment_id)
        seconds = []
        with live.current_run(run):
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                live.log_epoch(EPOCH, step=epoch)
                seconds.append(time.perf_counter() - started)
        assert len(client.get_metric_history(run.run_id, "train/box_loss")) == epochs
    print(f"{len(EPOCH)} metrics per epoch, {epochs} epochs: median {1000 * statistics.median(seconds):.1f} ms, "
          f"max {1000 * max(seconds):.1f} ms per epoch")


if __name__ == "__main__":
    main()
