from leukoflow.detection import apply_review
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, apply_review)
