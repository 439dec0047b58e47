from leukoflow.curation import summarize_curation
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, summarize_curation)
