from leukoflow.detection import make_crops
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, make_crops)
