from leukoflow.report import tabulate_scores
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, tabulate_scores)
