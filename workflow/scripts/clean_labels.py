from leukoflow.detection import clean_labels
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, clean_labels)
