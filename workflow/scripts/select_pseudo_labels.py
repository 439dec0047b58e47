from leukoflow.classification import select_pseudo_labels
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, select_pseudo_labels)
