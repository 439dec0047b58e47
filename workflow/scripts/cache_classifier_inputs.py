from leukoflow.classification import cache_classifier_inputs
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, cache_classifier_inputs)
