# MLflow: one parent run per invocation, opened before the first job and ended after the last.
# Hooks run in the main snakemake process only (spawned cluster jobs get --no-hooks), so the
# store is created/upgraded exactly once before parallel jobs log into it (docs/hardware.md §3).
# Training jobs open their own child run in leukoflow.engine.runtime.run_rule; the other tracked
# jobs journal theirs, and these hooks log the journal (leukoflow.engine.journal).
from leukoflow.engine import journal, tracking


onstart:
    tracking.on_start(config, targets=tracking.requested_targets(workflow))
    journal.flush(config)  # runs a killed invocation left


onsuccess:
    journal.flush(config)
    tracking.on_finish(config, succeeded=True)


onerror:
    journal.flush(config)
    tracking.on_finish(config, succeeded=False)
