from leukoflow.report import tabulate_ledger
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, tabulate_ledger)
