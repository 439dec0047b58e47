from leukoflow.synthetic import synthesize
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, synthesize)
