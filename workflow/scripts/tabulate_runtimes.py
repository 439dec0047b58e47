from leukoflow.report import tabulate_runtimes
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, tabulate_runtimes)
