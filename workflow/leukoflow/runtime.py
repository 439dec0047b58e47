"""What every rule script shares: logging to the rule's log file, timing, and the summary JSON.

Scripts stay three lines: import the stage, call `run_rule(snakemake, stage.run)`. The stage's
`run(smk)` reads the rule's input/params/output and returns its summary figures.
With tracking on, each job is also one MLflow run (`leukoflow.tracking`): FINISHED with the
summary as metrics, or FAILED when the stage raises.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leukoflow import offline, tracking

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_plain) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _plain(value: Any) -> Any:
    """numpy scalars and paths in summaries become plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def run_rule(smk: Any, stage_run: Callable[[Any], dict[str, Any]], *, tracked: bool = False) -> dict[str, Any]:
    """Run one stage under Snakemake: log file, timing, `output.summary` written when declared.

    `tracked` jobs (those that train, predict, evaluate, search or build a submission) are also
    one MLflow run each; data-preparation jobs skip MLflow and its few seconds of import time.
    """
    offline.enforce()
    log_path = Path(smk.log[0]) if len(smk.log) else None
    _configure_logging(log_path)
    logger = logging.getLogger(f"leukoflow.{smk.rule}")
    run = tracking.start_rule_run(smk) if tracked else tracking.RuleRun()  # no-op unless `tracking.enabled`
    started = time.perf_counter()
    logger.info("rule %s starts (threads=%s, tracked=%s)", smk.rule, smk.threads, run.active)
    try:
        summary = stage_run(smk)
    except BaseException:
        logger.exception("rule %s failed", smk.rule)
        run.fail()
        raise
    summary = dict(summary)
    summary.setdefault("seconds", round(time.perf_counter() - started, 3))
    if hasattr(smk.output, "summary"):
        write_json(smk.output.summary, summary)
    logger.info("rule %s done in %.1f s", smk.rule, summary["seconds"])
    run.finish(summary, smk)
    return summary


def _configure_logging(log_path: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
