"""What every rule script shares: binding, logging to the rule's log file, timing, the summary JSON.

Scripts are three lines: import the rule's entry, import `run_rule`, call `run_rule(snakemake, entry)`.
The entry is a keyword-only function named after the rule; `bind` passes it the job's named
input/output/params (and `threads`/`log` when it takes them) and `run_rule` writes the summary it
returns to `output.summary`. Entries decorated `@tracked` are also one MLflow run each
(`leukoflow.engine.tracking`): FINISHED with the summary as metrics, or FAILED when the entry raises;
while the entry runs, its training loops log per-epoch metrics live (`leukoflow.engine.live`).
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from leukoflow.engine import journal, live, offline, recovery, tracking
from leukoflow.engine.summaries import read_json, write_json

__all__ = ["RuleBindingError", "bind", "read_json", "run_rule", "tracked", "write_json"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


SUMMARY_OUTPUT = "summary"
Entry = TypeVar("Entry", bound=Callable[..., dict[str, Any]])


class RuleBindingError(TypeError):
    """A rule's named files/params do not match its entry's keyword arguments."""


def tracked(entry: Entry) -> Entry:
    """Mark a rule entry whose job is one MLflow run (training, prediction, evaluation, search).

    The job journals its run (`leukoflow.engine.journal`) and never imports MLflow; the main
    Snakemake process relays the record into the store while the job runs, epochs included.
    """
    entry.tracked = True  # type: ignore[attr-defined]
    return entry


def bind(smk: Any, entry: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of `entry` for this job: named input/output/params, threads, log."""
    parameters = inspect.signature(entry).parameters
    bound: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section in ("input", "output", "params"):
        for name, value in getattr(smk, section).items():
            if section == "output" and name == SUMMARY_OUTPUT:
                continue
            if name in bound:
                raise RuleBindingError(f"rule {smk.rule}: {name!r} is named in both {origin[name]} and {section}")
            bound[name], origin[name] = _plain_value(value), section
    if "threads" in parameters:
        bound["threads"] = smk.threads
    if "log" in parameters:
        bound["log"] = str(smk.log[0]) if len(smk.log) else None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(name for name in bound if name not in parameters and not takes_any)
    missing = sorted(name for name, p in parameters.items()
                     if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
                     and name not in bound)
    if unknown or missing:
        raise RuleBindingError(f"rule {smk.rule} -> {entry.__module__}.{entry.__name__}: "
                               f"not taken by the entry {unknown}, not given by the rule {missing}")
    return bound


def _plain_value(value: Any) -> Any:
    """Snakemake's named lists become plain lists; files and params pass as they are."""
    if isinstance(value, list) and not isinstance(value, str):
        return [_plain_value(item) for item in value]
    return value


def run_rule(smk: Any, entry: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Run one rule's entry under Snakemake: binding, log file, timing, `output.summary`.

    Tracked entries (`@tracked`) are also one MLflow run each; data-preparation jobs skip MLflow
    and its few seconds of import time.
    """
    if multiprocessing.parent_process() is not None:
        return {}  # a spawned worker re-imports the script as its main module: only the job runs the rule
    recovery.die_with_snakemake()  # no orphan writes after a kill -9 of the run
    is_tracked = getattr(entry, "tracked", False)
    offline.enforce()
    log_path = Path(smk.log[0]) if len(smk.log) else None
    _configure_logging(log_path)
    logger = logging.getLogger(f"leukoflow.{smk.rule}")
    run = journal.start_journaled_run(smk) if is_tracked else tracking.RuleRun()  # no-op unless `tracking.enabled`
    started = time.perf_counter()
    logger.info("rule %s starts (threads=%s, tracked=%s)", smk.rule, smk.threads, run.active)
    try:
        with live.current_run(run):  # per-epoch metrics reach the run while the entry trains
            summary = entry(**bind(smk, entry))
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
    if _is_snakemake_job(smk):
        _end_finished_job()
    return summary


def _is_snakemake_job(smk: Any) -> bool:
    """True in the process Snakemake started for a `script:` job (tests pass stand-in objects)."""
    return type(smk).__name__ == "Snakemake" and type(smk).__module__.startswith("snakemake")


def _end_finished_job() -> None:
    """Exit a finished job's process at once, every output written and closed.

    Interpreter teardown after torch, timm or MLflow costs 0.4-1.0 s of CPU per job (the C++
    libraries' destructors; BENCHMARKS.md, "Job exit"), which nothing of the job needs: logs and
    streams are flushed here, the tracking run is already ended, worker pools are closed by their
    context managers.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _configure_logging(log_path: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
