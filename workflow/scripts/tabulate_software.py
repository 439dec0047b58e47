from leukoflow.report import tabulate_software
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, tabulate_software)
