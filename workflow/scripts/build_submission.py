from leukoflow.ensemble import build_submission
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, build_submission)
