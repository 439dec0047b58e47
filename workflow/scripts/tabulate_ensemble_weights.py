from leukoflow.report import tabulate_ensemble_weights
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, tabulate_ensemble_weights)
