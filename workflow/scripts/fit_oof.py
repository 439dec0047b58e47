from leukoflow.detection import fit_oof
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, fit_oof)
