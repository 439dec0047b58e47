"""leukoflow: the Cytologia white-blood-cell method as a reproducible Snakemake workflow."""

__version__ = "0.1.0"

# A Snakemake rule script dies with its Snakemake from its first leukoflow import (kill -9 safety).
from leukoflow.engine.recovery import guard_rule_script as _guard_rule_script  # noqa: E402

_guard_rule_script()
