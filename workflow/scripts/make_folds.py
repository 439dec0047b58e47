from leukoflow.curation import make_folds
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, make_folds)
