# MLflow: one parent run per invocation, opened before the first job and ended after the last.
# Hooks run in the main snakemake process only (spawned cluster jobs get --no-hooks), so the
# store is created/upgraded exactly once before any job's run is logged (docs/hardware.md §3).
# Tracked jobs journal their runs (leukoflow.engine.runtime.run_rule); this process relays the
# records into the store while the jobs run and logs what is left at the end (leukoflow.engine.journal).
from leukoflow.engine import journal, tracking


onstart:
    tracking.on_start(config, targets=tracking.requested_targets(workflow))
    journal.start(config)


onsuccess:
    journal.flush(config)
    tracking.on_finish(config, succeeded=True)


onerror:
    journal.flush(config)
    tracking.on_finish(config, succeeded=False)
