from leukoflow.report import collect_metrics
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, collect_metrics)
