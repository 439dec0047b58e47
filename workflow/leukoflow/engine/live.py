"""Per-epoch metrics to the job's MLflow run while it trains, so the UI shows live curves.

`runtime.run_rule` makes a tracked job's run current for as long as its entry runs
(`current_run`); a training loop calls `log_epoch(metrics, step)` once per epoch. Outside a
tracked job, or with tracking off, `log_epoch` does nothing, so stage code neither imports MLflow
nor needs to know whether tracking is on. A failed write only warns (`RuleRun.log_epoch`): a
live curve is never worth a training job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

_current: Any = None  # the RuleRun of the job running in this process, if any


@contextlib.contextmanager
def current_run(run: Any) -> Iterator[None]:
    """Make `run` (a `tracking.RuleRun`) the target of `log_epoch` while the block runs."""
    global _current
    previous, _current = _current, run
    try:
        yield
    finally:
        _current = previous


def log_epoch(metrics: Mapping[str, Any], step: int) -> None:
    """Log one epoch's numbers (nested mappings become dotted keys) at `step` to the current run."""
    run = _current
    if run is not None and run.active:
        run.log_epoch(metrics, step)
