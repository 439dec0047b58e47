from leukoflow.classification import fetch_weights
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, fetch_weights)
