from leukoflow.detection import make_backgrounds
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, make_backgrounds)
