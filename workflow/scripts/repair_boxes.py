from leukoflow.curation import repair_boxes
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, repair_boxes)
