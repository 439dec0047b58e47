# MLflow: one parent run per invocation, opened before the first job and ended after the last.
# Hooks run in the main snakemake process only (spawned cluster jobs get --no-hooks), so the
# store is created/upgraded exactly once before parallel jobs log into it (docs/hardware.md §3).
# Each rule job opens its own child run in leukoflow.engine.runtime.run_rule.
from leukoflow.engine import tracking


onstart:
    tracking.on_start(config, targets=tracking.requested_targets(workflow))


onsuccess:
    tracking.on_finish(config, succeeded=True)


onerror:
    tracking.on_finish(config, succeeded=False)
