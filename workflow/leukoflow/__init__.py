"""leukoflow: the Cytologia white-blood-cell method as a reproducible Snakemake workflow."""

__version__ = "0.1.0"

import os

# Arrow's default allocator (mimalloc) keeps the pages it frees: reading the images table of 300k
# images it held 55 MB more than the system allocator, and more again through a parquet read. Arrow
# reads this once, when it first allocates; a rule script imports leukoflow before pandas or pyarrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

# A Snakemake rule script dies with its Snakemake from its first leukoflow import (kill -9 safety).
from leukoflow.engine.recovery import guard_rule_script as _guard_rule_script  # noqa: E402

_guard_rule_script()
