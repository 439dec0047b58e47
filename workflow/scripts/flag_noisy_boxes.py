from leukoflow.detection import flag_noisy_boxes
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, flag_noisy_boxes)
