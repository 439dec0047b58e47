from leukoflow.classification import ground_truth_crops
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, ground_truth_crops)
