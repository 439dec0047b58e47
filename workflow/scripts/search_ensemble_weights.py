from leukoflow.ensemble import search_ensemble_weights
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, search_ensemble_weights)
