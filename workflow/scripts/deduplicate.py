from leukoflow.curation import deduplicate
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, deduplicate)
