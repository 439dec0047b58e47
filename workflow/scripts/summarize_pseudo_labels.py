from leukoflow.classification import summarize_pseudo_labels
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, summarize_pseudo_labels)
